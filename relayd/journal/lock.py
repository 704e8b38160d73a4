"""One daemon per journal: an exclusive lock on ``<directory>/.lock``."""
import fcntl
import os


class JournalLocked(Exception):
    """Another process holds the journal directory."""


def acquire(directory):
    """Lock ``directory`` for this process; returns the fd to keep open (closing unlocks)."""
    path = os.path.join(directory, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalLocked(f"the journal {directory} is in use by another relayd "
                            f"(it holds {path}); two daemons cannot share a data directory") from None
    return fd
