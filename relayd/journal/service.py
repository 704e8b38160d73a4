"""The journal service: checkpoint and replay at start-up, group-committed
appends, periodic checkpoints, pruning.

The reactor thread only buffers lines and keeps counters; every file
operation after the start-up replay runs on the daemon's file pool, whose
single thread keeps them in order, except the periodic fsync of the
``batch`` policy, which has a thread of its own.
"""
import os
import time

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from relayd.filepool import FilePool
from relayd.journal import checkpoint, lock, segments
from relayd.journal.commit import GroupCommit
from relayd.journal.metrics import JournalMetrics
from relayd.journal.replay import ReplayReport, Start, replay
from relayd.journal.writer import SegmentWriter

POLICIES = ("always", "batch", "never")

# health() reports a journal whose oldest pending line, or fsync, is older than this.
LAG_LIMIT = 10.0


class Journal(Service):
    """Durable, ordered record of accepted messages.

    ``consumer.restore(record)`` is called for each good record at
    start-up, then ``consumer.restore_done(report)``.  ``append(line)``
    returns a Deferred that fires once the line is durable under the fsync
    policy: ``always`` (written and fsynced), ``batch`` (written to the OS;
    fsynced every ``fsync_interval`` seconds and at shutdown) or ``never``.

    State that replay rebuilds is registered with ``add_state(name,
    snapshot, load)``: every ``checkpoint_interval`` seconds (or after
    ``checkpoint_bytes`` written) and at shutdown, the snapshots are saved
    with the journal position they cover (``checkpoint``), and a start loads
    them and replays only the records after that position.  Without a
    usable checkpoint (none, damaged, or lacking a registered part) the
    whole journal is replayed.
    """

    log = Logger()
    name = "journal"

    def __init__(self, directory, file_pool, clock, consumer, *, fsync="batch",
                 fsync_interval=1.0, batch_interval=0.0, segment_size=64 * 2 ** 20,
                 retention=7 * 86400, max_size=2 ** 30, prune_interval=600.0,
                 checkpoint_interval=60.0, checkpoint_bytes=16 * 2 ** 20, registry=None):
        if fsync not in POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(POLICIES)}, not {fsync!r}")
        self.directory = directory
        self.file_pool = file_pool
        self.clock = clock
        self.consumer = consumer
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.retention = retention
        self.max_size = max_size
        self.prune_interval = prune_interval
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_bytes = checkpoint_bytes
        self.report = None
        self._states = {}             # name -> (snapshot, load)
        self._checkpointing = False   # a checkpoint is being written
        self._due = None              # the call that takes one after enough bytes
        self._checkpointed = None     # the position the last checkpoint covers
        self._since_checkpoint = 0    # bytes written since then
        self._position = None         # (segment, offset, seq) after the last record known durable
        self._lock = None
        self.records_written = 0
        self.bytes_written = 0
        self.segment_count = 0
        self.segment_bytes = 0
        self.last_fsync = None
        self.last_error = None
        self._failed_batches = 0
        self._dirty = False
        self._sync_since = None       # when the fsync in progress began
        self._writer = SegmentWriter(directory, segment_size, durable=fsync != "never")
        # The periodic fsync of the `batch` policy gets a thread of its own;
        # stand-in pools (tests) run it with the other jobs.
        if fsync == "batch" and fsync_interval > 0 and isinstance(file_pool, FilePool):
            self._sync_pool = FilePool(file_pool.reactor, ThreadPool(1, 1, "relayd-fsync"))
        else:
            self._sync_pool = file_pool
        self._commit = GroupCommit(clock, self._submit, batch_interval)
        self._fsync_loop = LoopingCall(self._sync_tick)
        self._fsync_loop.clock = clock
        self._prune_loop = LoopingCall(self._prune_tick)
        self._prune_loop.clock = clock
        self._checkpoint_loop = LoopingCall(self.checkpoint)
        self._checkpoint_loop.clock = clock
        self.metrics = JournalMetrics(registry, self)

    # --- life cycle ---------------------------------------------------------------

    def privilegedStartService(self):
        """Lock the directory: a journal in use stops the daemon here, before
        anything listens (an exception in startService would not stop twistd)."""
        super().privilegedStartService()
        self._lock_directory()

    def startService(self):
        """Load the checkpoint and replay, then take appends.  This runs after
        privilegedStartService, so the daemon's ports already listen:
        connections made meanwhile wait in the kernel's backlog and are
        served once the replay is done, instead of being refused."""
        if self._lock is None:
            self._lock_directory()
        if self.report is None:
            self._replay()
        super().startService()
        self._commit.closed = False
        if self._sync_pool is not self.file_pool:
            self._sync_pool.startService()
        if self.fsync == "batch" and self.fsync_interval > 0:
            self._fsync_loop.start(self.fsync_interval, now=False)
        if self.prune_interval > 0:
            self._prune_loop.start(self.prune_interval, now=True)
        if self.checkpoint_interval > 0 and self._states:
            self._checkpoint_loop.start(self.checkpoint_interval, now=False)

    def stopService(self):
        """Write what is pending, fsync and close; queued on the pool at once."""
        super().stopService()
        for loop in (self._fsync_loop, self._prune_loop, self._checkpoint_loop):
            if loop.running:
                loop.stop()
        if self._due is not None:
            self._due.cancel()
            self._due = None
        self.checkpoint()
        self._commit.close()
        d = self.file_pool.run(self._writer.close, True)
        d.addCallbacks(self._closed, self._close_failed)
        if self._sync_pool is not self.file_pool and self._sync_pool.running:
            # By now a tick in progress has queued its fsync: let it finish.
            d.addCallback(lambda _: self._sync_pool.stopService())
        return d

    def _lock_directory(self):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lock = lock.acquire(self.directory)

    def _replay(self):
        found = segments.scan(self.directory)
        start, summary = self._load_checkpoint()
        report = self.report = replay(self.directory, found, self.consumer.restore, start)
        report.checkpoint = summary
        self._writer.load(found, report.last_seq,
                          0 if start is None else segments.segment_index(start.segment))
        if start is not None:
            self._position = self._checkpointed = (start.segment, start.offset, start.seq)
        if found and (start is None or report.last_seq > start.seq):
            self._position = (found[-1].name, found[-1].size, report.last_seq)
        self.segment_count, self.segment_bytes = self._writer.summary()
        self.metrics.replayed(report)
        self.log.info("journal: replayed {records} records from {segments} segments{after} "
                      "({skipped} lines skipped, {missing} records and {missing_segments} "
                      "segments missing)", records=report.records, segments=report.segments,
                      after=f" after {summary}" if summary else "",
                      skipped=len(report.skipped), missing=report.missing_records,
                      missing_segments=len(report.missing_segments))
        self.consumer.restore_done(report)

    def _load_checkpoint(self):
        """Load the registered states from the checkpoint: ``(Start, summary)``,
        or ``(None, None)`` to replay everything."""
        if not self._states:
            return None, None
        checkpoint.remove_temporary(self.directory)
        try:
            saved = checkpoint.read(self.directory)
        except checkpoint.Damaged as e:
            self.metrics.checkpoint_damaged.inc()
            self.log.error("journal: the checkpoint is damaged ({reason}); replaying the "
                           "whole journal", reason=str(e))
            return None, None
        if saved is None:
            return None, None
        start, parts = saved
        lacking = sorted(set(self._states) - set(parts))
        if lacking:
            self.log.warn("journal: the checkpoint has no {parts}; replaying the whole journal",
                          parts=", ".join(lacking))
            return None, None
        blank = {name: _resolve(snapshot()) for name, (snapshot, _) in self._states.items()}
        for name, (_, load) in self._states.items():
            try:
                load(parts[name])
            except Exception:
                self.metrics.checkpoint_damaged.inc()
                self.log.failure("journal: the checkpoint's {part} could not be loaded; "
                                 "replaying the whole journal", part=name)
                for other, (_, reset) in self._states.items():
                    reset(blank[other])
                return None, None
        return start, f"the checkpoint at record {start.seq} ({start.segment} byte {start.offset})"

    def _closed(self, _):
        self.last_fsync = self.clock.seconds()
        self._unlock()
        self.log.info("journal: closed after {records} records", records=self.records_written)

    def _close_failed(self, failure):
        self.last_error = failure.getErrorMessage()
        self.log.failure("journal: final fsync/close failed", failure)
        self._unlock()

    def _unlock(self):
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- checkpoints --------------------------------------------------------------

    def add_state(self, name, snapshot, load):
        """Checkpoint ``snapshot()`` as ``name``; at start ``load(data)`` restores it.

        ``snapshot`` runs on the reactor thread and should only copy (C-level
        copies of lists and dicts); it returns JSON-able data, or a function
        returning it that the file thread calls.  Either must not share
        anything the reactor changes later."""
        self._states[name] = (snapshot, load)

    def checkpoint(self):
        """Save the registered states now, unless nothing was written since
        the last checkpoint or one is being written; Deferred (or None)."""
        position = self._position
        if not self._states or self._checkpointing or position is None \
                or position == self._checkpointed:
            return None
        start = Start(*position)
        began = self.clock.seconds()
        copying = time.perf_counter()
        parts = {name: snapshot() for name, (snapshot, _) in self._states.items()}
        self.metrics.snapshot_seconds.observe(time.perf_counter() - copying)
        self._checkpointing = True
        self._since_checkpoint = 0
        d = self.file_pool.run(checkpoint.write, self.directory, start, parts)
        d.addCallbacks(self._checkpoint_written, self._checkpoint_failed,
                       callbackArgs=(position, began))
        return d

    def _checkpoint_due(self):
        self._due = None
        self.checkpoint()

    def _checkpoint_written(self, size, position, began):
        self._checkpointing = False
        self._checkpointed = position
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_bytes.set(size)
        self.metrics.checkpoint_seconds.observe(self.clock.seconds() - began)

    def _checkpoint_failed(self, failure):
        self._checkpointing = False
        self.metrics.checkpoint_errors.inc()
        self.log.error("journal: writing a checkpoint failed: {error}",
                       error=failure.getErrorMessage())

    # --- appends ------------------------------------------------------------------

    def append(self, line):
        """Journal one JSON object (UTF-8 bytes, no newline); a Deferred that
        fires with the record's sequence number once it is durable."""
        return self._commit.append(line)

    def add(self, line):
        """Journal one JSON object; ``listener`` hears of it with its batch."""
        self._commit.add(line)

    @property
    def listener(self):
        return self._commit.listener

    @listener.setter
    def listener(self, listener):
        self._commit.listener = listener

    @property
    def pending(self):
        return self._commit.pending

    def _submit(self, lines):
        start = self.clock.seconds()
        d = self.file_pool.run(self._writer.write, lines, start, self.fsync == "always")
        d.addCallbacks(self._written, self._write_failed,
                       callbackArgs=(len(lines), start), errbackArgs=(len(lines),))
        return d

    def _written(self, summary, count, start):
        now = self.clock.seconds()
        self.segment_count, self.segment_bytes, size, self._position = summary
        self._since_checkpoint += size
        if self._since_checkpoint >= self.checkpoint_bytes > 0 and self._due is None:
            # after this batch's appends have been called back, so that the
            # snapshots hold what the position covers
            self._due = self.clock.callLater(0, self._checkpoint_due)
        self.records_written += count
        self.bytes_written += size
        if self.last_error is not None:
            self.log.info("journal: writes succeed again after {failed} failures",
                          failed=self._failed_batches)
            self.last_error, self._failed_batches = None, 0
        m = self.metrics
        m.write_seconds.observe(now - start)
        m.batch_records.observe(count)
        m.records.inc(count)
        m.bytes.inc(size)
        if self.fsync == "always":
            self.last_fsync = now
            m.fsyncs.inc()
        else:
            self._dirty = True
        return self._position[2] - count + 1      # the batch's first seq, for its appends

    def _write_failed(self, failure, count):
        error = failure.getErrorMessage()
        if error != self.last_error:
            self.log.error("journal: writing {count} records failed: {error} "
                           "(logged again only if the error changes)", count=count, error=error)
        self.last_error = error
        self._failed_batches += 1
        self.metrics.write_errors.inc()
        return failure

    # --- fsync and pruning timers ------------------------------------------------

    def _sync_tick(self):
        """fsync what was written since the last tick, on the fsync thread, so
        that a slow fsync never holds up the writes (and acks) behind it."""
        if not self._dirty:
            return None
        self._dirty = False
        self._sync_since = self.clock.seconds()
        d = self.file_pool.run(self._writer.take_unsynced)
        d.addCallback(lambda fds: self._sync_pool.run(self._writer.sync_and_close, fds))
        d.addCallbacks(self._synced, self._sync_failed)
        return d

    def _synced(self, count):
        self._sync_since = None
        if count:
            self.last_fsync = self.clock.seconds()
            self.metrics.fsyncs.inc(count)

    def _sync_failed(self, failure):
        self._sync_since = None
        self.last_error = failure.getErrorMessage()
        self._failed_batches += 1
        self.metrics.write_errors.inc()
        self.log.error("journal: fsync failed: {error}; starting a new segment",
                       error=self.last_error)
        self.file_pool.run(self._writer.close, False)

    def _prune_tick(self):
        d = self.prune()
        d.addErrback(lambda f: self.log.failure("journal: pruning failed", f))
        return d

    def prune(self):
        """Drop expired and excess closed segments now; Deferred[summary dict]."""
        d = self.file_pool.run(self._writer.prune, self.clock.seconds(),
                               self.retention, self.max_size)
        d.addCallback(self._pruned)
        return d

    def _pruned(self, summary):
        self.segment_count, self.segment_bytes = summary["segments"], summary["bytes"]
        m = self.metrics
        m.prunes.inc()
        m.pruned_segments.inc(len(summary["removed"]))
        m.pruned_bytes.inc(summary["removed_bytes"])
        if summary["removed"]:
            self.log.info("journal: pruned {count} segments ({size} bytes)",
                          count=len(summary["removed"]), size=summary["removed_bytes"])
        return summary

    # --- observation --------------------------------------------------------------

    def stats(self):
        now = self.clock.seconds()
        report = self.report or ReplayReport()
        return {
            "fsync": self.fsync,
            "segments": self.segment_count,
            "bytes": self.segment_bytes,
            "records_written": self.records_written,
            "bytes_written": self.bytes_written,
            "pending": self.pending,
            "lag_seconds": round(self._commit.lag(now), 6),
            "last_fsync_age": None if self.last_fsync is None else round(now - self.last_fsync, 3),
            "torn_lines_at_start": len(report.skipped),
            "missing_records_at_start": report.missing_records,
            "missing_segments_at_start": report.missing_segments,
            "checkpoint": None if self._checkpointed is None else self._checkpointed[2],
            "last_error": self.last_error,
        }

    def health(self):
        if self.last_error is not None:
            return f"journal write failed: {self.last_error}"
        now = self.clock.seconds()
        lag = self._commit.lag(now)
        if lag > LAG_LIMIT:
            return f"journal is {lag:.1f}s behind"
        if self._sync_since is not None and now - self._sync_since > LAG_LIMIT:
            return f"journal fsync has been running for {now - self._sync_since:.1f}s"
        return None


def _resolve(snapshot):
    """A snapshot given as a function (to finish on the file thread) called now."""
    return snapshot() if callable(snapshot) else snapshot
