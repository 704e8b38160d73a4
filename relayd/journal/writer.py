"""The file-thread side: the open segment, writes, fsync, rolling, pruning.

Every method runs on the file pool's single thread (``load`` runs at
start-up, before that thread has work), so nothing here needs a lock;
the exception is ``sync_and_close``, which only touches the descriptors it
is given, so that a periodic fsync can run on its own thread without
holding up writes.  Methods return small summaries for the reactor side.
"""
import os

from relayd.filepool import fsync_directory
from relayd.journal import record, retention, segments

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class SegmentWriter:
    """Frames and appends batches to the active segment, rolls it past ``segment_size``.

    Each record gets the next sequence number (``next_seq``) as it is
    framed.

    ``durable`` (fsync policy other than ``never``) keeps a rolled segment
    open until ``take_unsynced`` hands it out for its fsync, and fsyncs the
    directory when a segment is created.  After a
    failed write the segment is abandoned, so that a partly written batch is
    never followed by good lines in the same file: the batch is cut off
    and the segment goes on (a new segment only if the cut fails), so a
    full disk does not leave a file per failed batch.
    """

    def __init__(self, directory, segment_size, durable):
        self.directory = directory
        self.segment_size = segment_size
        self.durable = durable
        self.table = {}          # name -> [size, time of last record], oldest first
        self.total = 0
        self.next_index = 1
        self.active = None
        self.fd = None
        self.unsynced = False
        self.retired = []        # rolled segments awaiting their fsync
        self.next_seq = 1
        # Seams for tests.
        self._open = os.open
        self._write = os.write
        self._fsync = getattr(os, "fdatasync", os.fsync)

    def load(self, found, last_seq=0, last_index=0):
        """Adopt the segments found at start-up (the last record's seq
        ``last_seq``); new writes go to a new segment, numbered after them and
        after ``last_index`` (the checkpoint's, which may be gone)."""
        self.next_seq = last_seq + 1
        self.next_index = last_index + 1
        self.table = {s.name: [s.size, s.mtime] for s in found}
        self.total = sum(s.size for s in found)
        if found:
            self.next_index = max(self.next_index, max(s.index for s in found) + 1)

    def summary(self):
        return len(self.table), self.total

    def write(self, lines, now, sync):
        """Write one batch of JSON ``lines`` (and fsync it if ``sync``);
        returns ``(segments, total bytes, bytes written, position)`` where
        ``position`` is ``(segment, offset, seq)`` just after the batch."""
        data = record.frame_batch(self.next_seq, lines)
        if self.fd is None:
            self._open_next(now)
        entry = self.table[self.active]
        try:
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += self._write(self.fd, view[done:])
            if sync:
                self._fsync(self.fd)
        except OSError:
            self._cut(entry[0])
            raise
        self.unsynced = not sync
        entry[0] += len(data)
        entry[1] = now
        self.total += len(data)
        self.next_seq += len(lines)
        position = (self.active, entry[0], self.next_seq - 1)
        if entry[0] >= self.segment_size:
            self._retire()
        return len(self.table), self.total, len(data), position

    def _retire(self):
        """Stop writing the active segment; under a durable policy its fsync
        is left to ``take_unsynced`` so that it never delays the next write."""
        fd, self.fd, self.active = self.fd, None, None
        if self.unsynced and self.durable:
            self.retired.append(fd)
        else:
            os.close(fd)
        self.unsynced = False

    def take_unsynced(self):
        """File descriptors with unsynced writes, for ``sync_and_close`` on
        another thread: the retired segments and a dup of the active one."""
        fds, self.retired = self.retired, []
        if self.fd is not None and self.unsynced:
            fds.append(os.dup(self.fd))
            self.unsynced = False
        return fds

    def sync_and_close(self, fds):
        """fsync and close each of ``fds``; thread-safe (touches no state)."""
        error = None
        for fd in fds:
            try:
                self._fsync(fd)
            except OSError as e:
                error = error or e
            finally:
                os.close(fd)
        if error is not None:
            raise error
        return len(fds)

    def close(self, sync):
        """Close every open segment, first fsyncing those with unsynced writes if ``sync``."""
        fds, self.retired = self.retired, []
        if self.fd is not None:
            if self.unsynced:
                fds.append(self.fd)
            else:
                os.close(self.fd)
            self.fd, self.active, self.unsynced = None, None, False
        if sync:
            return self.sync_and_close(fds)
        for fd in fds:
            os.close(fd)
        return 0

    def prune(self, now, max_age, max_size):
        """Delete closed segments by age and size; returns a summary dict."""
        self._rescan()
        listing = [(name, size, last) for name, (size, last) in self.table.items()]
        removed = []
        for name, reason in retention.select(listing, self.active, now, max_age, max_size):
            size = self.table[name][0]
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
            del self.table[name]
            self.total -= size
            removed.append({"segment": name, "bytes": size, "reason": reason})
        count, total = self.summary()
        return {"removed": removed, "removed_bytes": sum(r["bytes"] for r in removed),
                "segments": count, "bytes": total, "active": self.active}

    def _rescan(self):
        """Reconcile the table with the directory (an operator may move files)."""
        table = {}
        for s in segments.scan(self.directory):
            known = self.table.get(s.name)
            table[s.name] = [s.size, known[1] if known else s.mtime]
        self.table = table
        self.total = sum(size for size, _ in table.values())

    def _open_next(self, now):
        while True:
            name = segments.segment_name(self.next_index)
            try:
                self.fd = self._open(os.path.join(self.directory, name), _FLAGS, 0o600)
            except FileExistsError:
                self.next_index += 1
                continue
            break          # any other error leaves the number for the next try
        self.next_index += 1
        self.active = name
        self.table[name] = [0, now]
        self.unsynced = False
        if self.durable:
            fsync_directory(self.directory)

    def _cut(self, good_size):
        """Cut a failed batch off the segment and go on with it; stop using
        the segment only if the cut fails."""
        try:
            os.ftruncate(self.fd, good_size)
            os.lseek(self.fd, good_size, os.SEEK_SET)
            return
        except OSError:
            pass
        fd, self.fd, name, self.active = self.fd, None, self.active, None
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = good_size
        os.close(fd)
        self.total += size - self.table[name][0]
        self.table[name][0] = size
