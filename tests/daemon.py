"""Run the real daemon (``twistd -n relayd``) as a subprocess for end-to-end tests.

    relay = Relayd(self, relay_ini('''
        [ratelimit]
        messages = 1000
    '''), tcp=free_port())
    relay.start(wait_tcp=[relay.ports["tcp"]])

Placeholders: ``{data_dir}`` and ``{workdir}`` plus every keyword given.
``relay_ini`` writes the head most tests share: ``[relay] data_dir`` and a
``[tcp]`` listener on loopback.
The process is stopped (SIGTERM, then SIGKILL) in the test's cleanup, and its
log is printed when a test fails to start it.
"""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from bench import ports

free_port = ports.free_port    # where the tests take their ports
READY = "SIGTERM stops"      # the daemon's log line once it runs with its signal handlers
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def wait_for_port(port, timeout=20.0, host="127.0.0.1", process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def relay_ini(sections="", tcp=True, **relay):
    """Config text for :class:`Relayd`: ``[relay]`` with ``data_dir =
    {data_dir}`` and the keys given, a ``[tcp]`` listener on the loopback port
    ``{tcp}`` (unless ``tcp`` is false), then ``sections`` (INI text)."""
    head = "[relay]\ndata_dir = {data_dir}\n" + "".join(f"{key} = {value}\n"
                                                      for key, value in relay.items())
    if tcp:
        head += "[tcp]\nlisten = tcp:{tcp}:interface=127.0.0.1\n"
    return head + textwrap.dedent(sections).lstrip("\n")


UNHANDLED = ("Unhandled Error", "Unhandled error in Deferred")


class Relayd:
    """One relayd process with its own work directory, config and log."""

    def __init__(self, testcase, ini, workdir=None, **ports):
        self.testcase = testcase
        self.workdir = os.path.abspath(workdir or testcase.mktemp())
        os.makedirs(self.workdir, exist_ok=True)
        self.ports = ports
        self.data_dir = os.path.join(self.workdir, "var")
        self.config = os.path.join(self.workdir, "relay.ini")
        self.logfile = os.path.join(self.workdir, "relayd.log")
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(ini).format(data_dir=self.data_dir, workdir=self.workdir, **ports))
        self.process = None
        testcase.addCleanup(self.check_log)     # after the stop below
        testcase.addCleanup(self.stop)

    def command(self):
        return TWISTD + ["-n", "--pidfile=", "--logfile", self.logfile,
                         "relayd", "--config", self.config]

    def start(self, wait_tcp=(), timeout=30.0):
        """Start the daemon; wait until every port in ``wait_tcp`` accepts and
        the daemon says it runs (its signal handlers are then in place, so an
        early SIGTERM is a graceful stop, not a kill)."""
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        started = self.log().count(READY)
        self.process = subprocess.Popen(self.command(), cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for port in wait_tcp:
            if not wait_for_port(port, timeout, process=self.process):
                self.stop()
                raise AssertionError(f"relayd did not listen on {port}:\n{self.output()}")
        deadline = time.monotonic() + timeout
        while self.log().count(READY) == started:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"relayd did not start:\n{self.output()}")
            time.sleep(0.05)
        return self

    def run_to_exit(self, timeout=30.0):
        """Start the daemon expecting it to exit (e.g. a config error): (code, output)."""
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run(self.command(), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        return done.returncode, done.stdout.decode("utf-8", "replace") + self.log()

    def log(self):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def output(self):
        return self.log()

    def check_log(self):
        """Fail the test if the daemon logged an error nothing handled (an
        exception that reached the reactor, or a Deferred's lost failure)."""
        log = self.log()
        for marker in UNHANDLED:
            at = log.find(marker)
            if at >= 0:
                raise AssertionError(f"relayd logged {marker!r}:\n{log[max(at - 200, 0):at + 3000]}")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Stop the process; returns its exit code (None if it was not running)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        return process.returncode

    def kill(self):
        """SIGKILL, as a crash would."""
        return self.stop(signal.SIGKILL)
