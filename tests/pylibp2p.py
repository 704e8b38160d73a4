"""py-libp2p peers (tests/interop/peers.py) for the hub interop tests.

py-libp2p lives in its own venv, tests/interop/pyenv, never in relayd's: its
metadata pins packages that clash with ours or need a compiler (see the head of
tests/interop/py-requirements.txt).  The first test that needs it builds the
venv from that lock (PyPI wheels only, so a bare Debian machine with Python
3.11 needs nothing more), serialised between trial workers by a lock file.
"""
import os
import subprocess
import venv

from tests.test_libp2p_interop import INTEROP, once, peer_result

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
            raise AssertionError(f"building tests/interop/pyenv failed at {' '.join(step[1:4])}:\n"
                                 + done.stdout.decode(errors="replace")[-5000:])
    with open(LOCK) as lock, open(STAMP, "w") as stamp:
        stamp.write(lock.read())


def ensure_pylibp2p():
    """Build tests/interop/pyenv unless it is built from the lock as it is
    (with the venv module that `make venv` uses too)."""
    once("pyenv", installed, build)


PEER = [PYTHON, SCRIPT]     # the command that starts a py peer (cwd INTEROP)


def py(*args, timeout=120):
    """Run one peers.py command; returns its JSON result line."""
    return peer_result(PEER, *args, timeout=timeout)
