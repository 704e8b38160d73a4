"""The dedicated single-thread pool for file I/O.

One thread keeps writes in submission order; the reactor thread never
touches the disk after start-up.
"""
import os

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class FilePool(Service):
    """A started/stopped-with-the-daemon ``ThreadPool(1, 1)``."""

    def __init__(self, reactor, pool=None):
        self.reactor = reactor
        self.pool = pool if pool is not None else ThreadPool(1, 1, "relayd-files")

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        """Stop once every job queued before now (e.g. a journal's final
        flush, queued by its own stopService) has run."""
        super().stopService()
        d = self.run(lambda: None)
        d.addBoth(lambda _: self.pool.stop())
        return d

    def run(self, f, *args, **kwargs):
        """Run ``f`` on the file thread; a Deferred fires on the reactor thread."""
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)


def write_atomically(path, data, mode=0o666, sync_directory=False):
    """Replace ``path`` with ``data`` (bytes), synced, in one rename: a crash
    leaves the old file or the new one.  A new file gets ``mode`` (less the
    umask); with ``sync_directory`` the rename itself is synced too.  A
    failed write leaves no temporary file.  On the file thread (or before
    the reactor runs)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)
    if sync_directory:
        fsync_directory(os.path.dirname(path) or ".")


def fsync_directory(directory):
    """Make the names created or renamed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
