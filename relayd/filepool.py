"""The dedicated single-thread pool for file I/O.

One thread keeps writes in submission order; the reactor thread never
touches the disk after start-up.  A job is handed over with one C-level
queue ``put`` and comes back with one ``callFromThread``: at 1,000
messages a second every message is its own journal batch, and Twisted's
general thread pool (a worker team, a ``Condition`` queue, context
propagation) cost the reactor about 30 us a batch and held the GIL on the
file thread for longer (docs/PERFORMANCE.md, "Latency breakdown").
"""
import os
import threading
from queue import SimpleQueue

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_STOP = None        # the job that ends the thread


class FilePool(Service):
    """A started/stopped-with-the-daemon thread named ``name`` that runs
    jobs one at a time, in the order given."""

    def __init__(self, reactor, name="relayd-files"):
        self.reactor = reactor
        self.thread_name = name
        self._jobs = SimpleQueue()
        self._thread = None

    def startService(self):
        super().startService()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)
            self._thread.start()

    def stopService(self):
        """Stop once every job queued before now (e.g. a journal's final
        flush, queued by its own stopService) has run."""
        super().stopService()
        if self._thread is None:
            return None
        d = self.run(lambda: None)
        d.addBoth(self._stop)
        return d

    def _stop(self, result):
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join()
        return result

    def run(self, f, *args, **kwargs):
        """Run ``f`` on the file thread; a Deferred fires on the reactor thread.
        Jobs given before the pool starts wait for it."""
        d = Deferred()
        self._jobs.put((f, args, kwargs, d))
        return d

    def _work(self):
        get, call = self._jobs.get, self.reactor.callFromThread
        while True:
            job = get()
            if job is _STOP:
                return
            f, args, kwargs, d = job
            try:
                result = f(*args, **kwargs)
            except BaseException:
                result = Failure()
            call(_fire, d, result)
            del job, f, args, kwargs, d, result     # nothing kept alive while idle


def _fire(d, result):
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


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
