"""py-libp2p peers (tests/interop/peers.py) for the hub interop tests.

py-libp2p lives in its own venv, tests/interop/pyenv, never in relayd's: its
metadata pins packages that clash with ours or need a compiler (see the head of
tests/interop/py-requirements.txt).  The first test that needs it builds the
venv from that lock (PyPI wheels only, so a bare Debian machine with Python
3.11 needs nothing more), serialised between trial workers by a lock file.
"""
import fcntl
import json
import os
import subprocess
import tempfile
import venv

from tests.test_libp2p_interop import INTEROP

PYENV = os.path.join(INTEROP, "pyenv")
PYTHON = os.path.join(PYENV, "bin", "python")
SCRIPT = os.path.join(INTEROP, "peers.py")
LOCK = os.path.join(INTEROP, "py-requirements.txt")
STAMP = os.path.join(PYENV, "installed.txt")
# what a venv must do before it counts as built: import the peers' modules
# and make a P-256 key (the fastecdsa the lock swaps in for libp2p's pin)
SMOKE = ("import peers; from libp2p.crypto.ecc import create_new_key_pair; "
         "create_new_key_pair('P-256').public_key.serialize()")


def installed():
    """The venv was built from the lock as it is now."""
    try:
        with open(STAMP) as stamp, open(LOCK) as lock:
            return stamp.read() == lock.read()
    except FileNotFoundError:
        return False


def build():
    venv.EnvBuilder(clear=True, with_pip=True).create(PYENV)
    pip = [PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary", ":all:", "--no-binary", "varint,python-baseconv"]
    for step in (pip + ["-r", LOCK], [PYTHON, "-c", SMOKE]):
        done = subprocess.run(step, cwd=INTEROP, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=900)
        if done.returncode != 0:
            raise AssertionError(f"building tests/interop/pyenv failed at {step[2:4]}:\n"
                                 + done.stdout.decode(errors="replace")[-5000:])
    with open(LOCK) as lock, open(STAMP, "w") as stamp:
        stamp.write(lock.read())


def ensure_pylibp2p():
    """Build tests/interop/pyenv once (with the venv module `make venv` uses)."""
    if installed():
        return
    lock_path = os.path.join(tempfile.gettempdir(), "relayd-interop-pyenv-%d.lock" % os.getuid())
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed():
            build()


def py_peer(*args):
    """Start one peers.py command; its stdin is a pipe (for "go")."""
    return subprocess.Popen([PYTHON, SCRIPT, *map(str, args)], cwd=INTEROP, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def py(*args, timeout=120):
    """Run one peers.py command to its end; returns its last JSON line."""
    done = subprocess.run([PYTHON, SCRIPT, *map(str, args)], cwd=INTEROP, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"peers.py {args[0]} failed ({done.returncode}):\n"
                             f"{done.stdout.decode()}\n{done.stderr.decode()[-3000:]}")
    return json.loads(lines[-1])

