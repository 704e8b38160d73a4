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
import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

READY = "SIGTERM stops"      # the daemon's log line once it runs with its signal handlers
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def _ephemeral_floor():
    """The lowest port the kernel hands out for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_LEDGER = os.path.join(tempfile.gettempdir(), "relayd-test-ports-%d" % os.getuid())
PORT_HOLD = 900.0           # seconds a handed-out port is not handed out again


def _reserved(ledger, now):
    """Ports handed out in the last PORT_HOLD seconds, from the ledger's lines."""
    held = {}
    for line in ledger.read().splitlines():
        try:
            port, when = line.split()
            if now - float(when) < PORT_HOLD:
                held[int(port)] = when
        except ValueError:
            continue
    return held


def free_port(kind=socket.SOCK_STREAM):
    """A port that was free on 127.0.0.1 a moment ago and that no other test
    (in this process, another trial worker or another run) was given lately.

    It is drawn at random below the kernel's ephemeral range, where no
    outgoing connection can take it before the daemon binds it, and written
    to a ledger shared by every test process (under an exclusive lock), so
    that two trial workers never start daemons on the same port.
    """
    high = _ephemeral_floor() - 1
    with open(PORT_LEDGER, "a+") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)
        ledger.seek(0)
        now = time.time()
        held = _reserved(ledger, now)
        for _ in range(200):
            port = random.randint(min(10000, high // 2), high)
            if port in held:
                continue
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            held[port] = now
            ledger.seek(0)
            ledger.truncate()
            ledger.write("".join(f"{p} {t}\n" for p, t in held.items()))
            return port
    raise RuntimeError("no free port below the ephemeral range")


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
