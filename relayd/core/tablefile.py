"""A JSON table kept in the data directory (key ownership, prekeys, the
DHT's records).

Read once when the daemon starts, before anything listens; rewritten
atomically on the file pool whenever it changes, one write at a time: a
subclass calls ``save()`` after each change, changes made during a write
go into the next one, and the table is encoded on the file thread from a
copy (``snapshot``), never on the reactor.
"""
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relayd.filepool import write_atomically


class TableFile(Service):
    """Subclasses define ``load()`` (start-up only; sets ``loaded``),
    ``snapshot()`` (a copy of the table, on the reactor) and
    ``encode(snapshot)`` (bytes, on the file thread)."""

    log = Logger()

    def __init__(self, path, file_pool):
        self.path = path
        self.file_pool = file_pool
        self.loaded = False
        self._saving = False       # a write is on the file pool
        self._next = []            # Deferreds of saves asked for during that write

    def privilegedStartService(self):
        self.load()
        super().privilegedStartService()

    def startService(self):
        if not self.loaded:
            self.load()
        super().startService()

    def save(self):
        """Write the table; the Deferred fires (with None) once a write
        holding every change made before this call has ended.  A failed
        write is logged, not raised: the next change writes it all again."""
        d = Deferred()
        if self._saving:
            self._next.append(d)
        else:
            self._start([d])
        return d

    def _start(self, waiting):
        self._saving = True
        d = self.file_pool.run(self._write, self.snapshot())
        d.addErrback(lambda f: self.log.failure("could not save {path}", f, path=self.path))
        d.addCallback(self._saved, waiting)

    def _write(self, snapshot):
        write_atomically(self.path, self.encode(snapshot))

    def _saved(self, _, waiting):
        self._saving = False
        if self._next:
            following, self._next = self._next, []
            self._start(following)
        for d in waiting:
            d.callback(None)
