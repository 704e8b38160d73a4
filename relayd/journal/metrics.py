"""Prometheus metrics of the journal."""
from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)


class JournalMetrics:
    """The journal's counters; gauges read ``journal`` when scraped."""

    def __init__(self, registry, journal):
        def counter(name, doc):
            return Counter(name, doc, registry=registry)

        def gauge(name, doc, read):
            Gauge(name, doc, registry=registry).set_function(read)

        self.write_seconds = Histogram(
            "relayd_journal_write_seconds",
            "Time from submitting a batch to its acknowledgement (write, plus fsync under 'always')",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.batch_records = Histogram(
            "relayd_journal_batch_records", "Records per group-commit batch",
            buckets=_BATCH_BUCKETS, registry=registry)
        self.records = counter("relayd_journal_records_total", "Records written to the journal")
        self.bytes = counter("relayd_journal_bytes_total", "Bytes written to the journal")
        self.write_errors = counter("relayd_journal_write_errors_total",
                                    "Failed batch writes or fsyncs (their appends failed)")
        self.fsyncs = counter("relayd_journal_fsyncs_total", "fsync calls on journal segments")
        self.torn_lines = counter(
            "relayd_journal_torn_lines_total",
            "Torn or corrupt records (bad checksum, duplicate seq...) skipped by the start-up replay")
        self.missing_records = counter(
            "relayd_journal_missing_records_total",
            "Sequence numbers missing from the journal, found by a start-up replay")
        self.missing_segments = counter(
            "relayd_journal_missing_segments_total",
            "Segment files missing between those found by a start-up replay")
        self.legacy_records = counter(
            "relayd_journal_legacy_records_total",
            "Records of the format before checksums read by a start-up replay")
        self.checkpoints = counter("relayd_journal_checkpoints_total", "Checkpoints written")
        self.checkpoint_errors = counter("relayd_journal_checkpoint_errors_total",
                                         "Checkpoints that could not be written")
        self.checkpoint_damaged = counter(
            "relayd_journal_checkpoint_damaged_total",
            "Damaged checkpoints found at start (the whole journal was replayed)")
        self.checkpoint_bytes = Gauge("relayd_journal_checkpoint_bytes",
                                      "Size of the last checkpoint written", registry=registry)
        self.checkpoint_seconds = Histogram(
            "relayd_journal_checkpoint_seconds", "Time to snapshot, encode and write a checkpoint",
            buckets=_LATENCY_BUCKETS + (10.0, 30.0), registry=registry)
        self.snapshot_seconds = Histogram(
            "relayd_journal_checkpoint_snapshot_seconds",
            "Time the reactor thread spends copying the state for a checkpoint",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.prunes = counter("relayd_journal_prunes_total", "Prune runs")
        self.pruned_segments = counter("relayd_journal_pruned_segments_total", "Segments deleted by pruning")
        self.pruned_bytes = counter("relayd_journal_pruned_bytes_total", "Bytes deleted by pruning")
        gauge("relayd_journal_pending", "Records appended but not yet durable",
              lambda: journal.pending)
        gauge("relayd_journal_segments", "Segment files in the journal directory",
              lambda: journal.segment_count)
        gauge("relayd_journal_segment_bytes", "Total size of the journal's segments",
              lambda: journal.segment_bytes)

    def replayed(self, report):
        """Count what a start-up replay found."""
        self.torn_lines.inc(len(report.skipped))
        self.missing_records.inc(report.missing_records)
        self.missing_segments.inc(len(report.missing_segments))
        self.legacy_records.inc(report.legacy)
