"""Group commit on the reactor thread.

``append`` only adds the line to a list; one write job per batch carries
the list to the file thread, which frames and writes it.  While a batch is being
written the next one gathers, so batches grow with the load.  ``add`` is
``append`` without a Deferred: the ``listener`` hears of those lines once
per batch.
"""
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure


class JournalClosed(Exception):
    """The journal has stopped and accepts no more lines."""


class GroupCommit:
    """Buffers lines and hands them in order to ``submit(lines) -> Deferred``
    (firing with the first line's sequence number, or None).

    A batch goes out on the next reactor turn (or ``delay`` seconds after
    its first line), and never while the previous one is still being
    written.  Each line's Deferred fires with None, or fails with the
    batch's failure.  With a sequence number from ``submit``, each line's
    Deferred fires with its own (the first plus its place in the batch).
    Lines given to ``add`` have no Deferred: once their batch is handled,
    ``listener(count, result)`` is called once with how many there were and
    the batch's first sequence number (or None), or its Failure.
    """

    def __init__(self, clock, submit, delay=0.0):
        self._clock = clock
        self._submit = submit
        self._delay = delay
        self._lines = []
        self._waiters = []
        self._since = None            # when the oldest buffered line arrived
        self._busy = 0                # lines being written
        self._busy_since = None
        self._call = None
        self.closed = False
        self.listener = None

    @property
    def pending(self):
        """Lines appended but not yet acknowledged."""
        return len(self._lines) + self._busy

    def lag(self, now):
        """Age in seconds of the oldest unacknowledged line."""
        oldest = self._busy_since if self._busy_since is not None else self._since
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def append(self, line):
        d = Deferred()
        if self.closed:
            d.errback(JournalClosed("the journal is stopped"))
            return d
        self._buffer(line, d)
        return d

    def add(self, line):
        """Buffer ``line`` for the ``listener``; raises TypeError if it is
        not bytes, JournalClosed once closed."""
        if not isinstance(line, bytes):
            raise TypeError(f"a journal line must be bytes, not {type(line).__name__}")
        if self.closed:
            raise JournalClosed("the journal is stopped")
        self._buffer(line, None)

    def _buffer(self, line, waiter):
        if not self._lines:
            self._since = self._clock.seconds()
            if self._call is None and not self._busy:
                self._call = self._clock.callLater(self._delay, self.flush)
        self._lines.append(line)
        self._waiters.append(waiter)

    def flush(self):
        """Submit the buffered lines now; a Deferred fires once they are handled."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        if not self._lines:
            return succeed(None)
        lines, waiters, since = self._lines, self._waiters, self._since
        self._lines, self._waiters, self._since = [], [], None
        for line in lines:
            if not isinstance(line, bytes):
                lines, waiters = _refuse_non_bytes(lines, waiters)
                if not waiters:
                    return succeed(None)
                break
        if not self._busy:
            self._busy_since = since
        self._busy += len(waiters)
        d = self._submit(lines)
        d.addBoth(self._done, waiters)
        return d

    def close(self):
        """Refuse new lines and submit the buffered ones at once."""
        self.closed = True
        return self.flush()

    def _done(self, result, waiters):
        self._busy -= len(waiters)
        if not self._busy:
            self._busy_since = None
        quiet = 0
        if isinstance(result, Failure):
            for d in waiters:
                if d is None:
                    quiet += 1
                else:
                    d.errback(result)
        else:
            for seq, d in enumerate(waiters, result or 0):
                if d is None:
                    quiet += 1
                else:
                    d.callback(None if result is None else seq)
        if quiet:
            self.listener(quiet, result)
        if self._lines and self._call is None and not self.closed:
            self._schedule()

    def _schedule(self):
        if self._delay > 0:
            wait = self._since + self._delay - self._clock.seconds()
            self._call = self._clock.callLater(max(0.0, wait), self.flush)
        else:
            self.flush()


def _refuse_non_bytes(lines, waiters):
    """Fail the appends whose line is not bytes; ``(lines, waiters)`` of the rest."""
    good, kept = [], []
    for line, d in zip(lines, waiters):
        if isinstance(line, bytes):
            good.append(line)
            kept.append(d)
        else:
            d.errback(TypeError(f"a journal line must be bytes, not {type(line).__name__}"))
    return good, kept
