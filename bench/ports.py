"""Free loopback ports for daemons under test and benchmark, never handed out twice.

A port is drawn at random below the kernel's ephemeral range, where no
outgoing connection can take it while a daemon restarts on it, and written
to a ledger shared by every process of this user (under an exclusive lock):
two trial workers, or a benchmark run from a test, never get the same port
within PORT_HOLD seconds.
"""
import fcntl
import os
import random
import socket
import tempfile
import time


def _ephemeral_floor():
    """The lowest port the kernel hands out for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_LEDGER = os.path.join(tempfile.gettempdir(), "relayd-ports-%d" % os.getuid())
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
    """A port (of socket type ``kind``) that was free on 127.0.0.1 a moment
    ago and that no other caller (this process, another trial worker, a
    benchmark, another run) was given in the last PORT_HOLD seconds."""
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
