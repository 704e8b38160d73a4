"""Run the commands a document shows, verbatim, the way a reader would.

    sandbox = DocSandbox(self)          # skips (saying why) without network namespaces
    [keys, *relays] = shell_blocks("README.md", "Federation")[0]
    sandbox.run(keys)
    sandbox.start(relays[0])

A sandbox is a fresh directory holding the repository's committed files
(``git archive HEAD``: never the reader's edited ``etc/relay.ini``) with
``.venv`` made of links to the running virtualenv and a fresh ``make venv``
stamp, so a command such as ``.venv/bin/twistd -n relayd --config
etc/relay.ini``, or ``make run``, runs as written (the virtualenv is not
built again).  The virtualenv's ``bin`` is on the PATH, as after the README's
``. .venv/bin/activate``.  Every command runs inside a network namespace of
its own (loopback only), so the fixed ports the documents use cannot collide
with other tests or with a relay the reader runs, and with the sandbox as
its home directory.
"""
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time

from tests.daemon import REPO


def shell_blocks(path, heading):
    """The ```sh blocks of the section ``heading`` (any level, up to the next
    heading) of the Markdown file ``path`` (relative to the repository): one
    list of command lines per block, comment-only and empty lines left out."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, block, inside, fence = [], None, False, False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
            if inside and line == "```sh":
                block = []
            elif block is not None:
                blocks.append(block)
                block = None
        elif fence:
            if block is not None and line.strip() and not line.lstrip().startswith("#"):
                block.append(line)
        elif re.match(r"#+ ", line):
            if inside:
                break
            inside = re.sub(r"^#+ ", "", line).strip() == heading
    if not inside and not blocks:
        raise AssertionError(f"{path} has no section {heading!r}")
    return blocks


def committed_tree(destination):
    """Extract ``git archive HEAD`` of the repository into ``destination``."""
    archive = os.path.join(destination, ".tree.tar")
    subprocess.run(["git", "-C", REPO, "archive", "--format=tar", "-o", archive, "HEAD"],
                   check=True, capture_output=True, timeout=60)
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    os.unlink(archive)


def committed_file(path):
    """The text of ``path`` as committed (``git show HEAD:path``), or None
    outside a git checkout."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
        return None
    return subprocess.run(["git", "-C", REPO, "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def sandbox_unavailable():
    """None when doc commands can run in a sandbox here, else the reason."""
    if sys.prefix == sys.base_prefix:
        return "the tests do not run in a virtualenv, so the docs' .venv/bin commands do not exist"
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
        return "not a git checkout: the committed files cannot be told from edited ones"
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        return ("needs root, ip (iproute2) and unshare for the network and mount "
                "namespaces in which the docs' fixed ports are free")
    return None


class DocSandbox:
    """A directory and a network namespace in which doc commands run."""

    def __init__(self, testcase):
        reason = sandbox_unavailable()
        if reason:
            testcase.skipTest(reason)
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        committed_tree(self.dir)
        venv = os.path.join(self.dir, ".venv")
        os.makedirs(venv)
        for name in os.listdir(sys.prefix):
            if name != ".installed":
                os.symlink(os.path.join(sys.prefix, name), os.path.join(venv, name))
        open(os.path.join(venv, ".installed"), "w").close()      # newer than setup.cfg here
        self.ns = f"relaydoc{os.getpid()}x{id(self) % 100000}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        testcase.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        self.env = dict(os.environ, PATH=os.path.join(sys.prefix, "bin") + os.pathsep
                        + os.environ.get("PATH", ""), HOME=self.dir)
        self.env.pop("PYTHONPATH", None)
        self.ssh_config = os.path.join(self.dir, ".ssh_config")
        with open(self.ssh_config, "w") as f:
            f.write(f"Host *\n    UserKnownHostsFile {self.dir}/.ssh/known_hosts\n")
        self.processes = []
        testcase.addCleanup(self.stop_all)

    def argv(self, line):
        """``line`` in the namespace; ssh there keeps its known hosts in the
        sandbox's ``~/.ssh`` (it takes ``~`` from the password database, not
        from $HOME), through an ssh_config mounted for this command only."""
        return ["ip", "netns", "exec", self.ns, "unshare", "--mount", "sh", "-c",
                'if [ -e /etc/ssh/ssh_config ]; then mount --bind "$1" /etc/ssh/ssh_config '
                '|| exit 125; fi; exec sh -c "$2"', "sh", self.ssh_config, line]

    def run(self, line, timeout=60, input=None):
        """Run ``line`` to its end: ``(exit status, stdout and stderr)``."""
        done = subprocess.run(self.argv(line), cwd=self.dir, env=self.env, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        return done.returncode, done.stdout

    def run_on_a_terminal(self, line, typed, timeout=30.0):
        """Run ``line`` on a new pseudo-terminal, as a reader at a terminal
        would, typing ``typed`` (bytes) once it prints something; its exit
        status and everything it printed."""
        master, slave = pty.openpty()
        process = subprocess.Popen(self.argv(line), cwd=self.dir, env=self.env, stdin=slave,
                                   stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        output, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:         # EIO: the terminal's last user has gone
                    break
                if not output and typed:
                    os.write(master, typed)
                output += chunk
        os.close(master)
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        return code, output.decode("utf-8", "replace")

    def start(self, line, input=None):
        """Start ``line`` (one simple command) as a reader would in a terminal
        of its own, typing ``input`` (bytes; stdin stays open); its output goes
        to a file, read with ``output(process)``."""
        log = open(os.path.join(self.dir, f".out{len(self.processes)}"), "w+")
        # exec: the command is the process a signal reaches, as in a terminal.
        process = subprocess.Popen(self.argv("exec " + line), cwd=self.dir, env=self.env,
                                   stdin=subprocess.PIPE if input is not None else None,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if input is not None:
            process.stdin.write(input)
            process.stdin.flush()
        process.log = log
        self.processes.append(process)
        return process

    @staticmethod
    def output(process):
        with open(process.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_output(self, process, text, timeout=30.0):
        """Wait until ``process`` has printed ``text``; its output so far."""
        deadline = time.monotonic() + timeout
        while text not in self.output(process):
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"no {text!r} from the command; it printed:\n"
                                     + self.output(process))
            time.sleep(0.1)
        return self.output(process)

    def stop(self, process, sig=signal.SIGTERM, timeout=15.0):
        """Send ``sig`` to the command's process group; its exit status."""
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.log.close()
        if process.stdin is not None:
            process.stdin.close()
        return process.returncode

    def stop_all(self):
        for process in self.processes:
            self.stop(process)
