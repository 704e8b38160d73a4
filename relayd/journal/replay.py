"""Start-up replay: every good record of every segment, in order, checked.

Each record's checksum is verified and its sequence number followed.  A
torn, corrupt or duplicated record (a crash mid-write, a flipped bit, a
full disk, stray bytes) is skipped and reported with its segment and line
number; a missing range of sequence numbers and a missing segment file are
reported by name.  Nothing of this stops the replay or hides the records
after it.  Records of the format before checksums (*legacy* records) are
read once, counted and reported; new writes are always checksummed.
"""
import os
from dataclasses import dataclass, field

from twisted.logger import Logger

from relayd.journal import record as framing, segments

log = Logger()

# Past this many problems of one kind in one start-up, only the total is logged.
LOGGED_SKIPS = 100

# A longer line is corrupt (messages are far smaller) and is skipped unread.
MAX_LINE = 16 * 2 ** 20


@dataclass
class ReplayReport:
    """What a replay found.

    ``skipped`` is ``[(segment, line, reason)]`` (line numbers count from
    the checkpoint's offset in the segment where a checkpoint ends),
    ``gaps`` is ``[(first_seq, last_seq, segment, line)]``: records missing
    before the line where the gap showed, ``missing_segments`` the names of
    segment files absent between the ones found.
    """
    records: int = 0
    skipped: list = field(default_factory=list)
    segments: int = 0
    bytes: int = 0
    gaps: list = field(default_factory=list)
    missing_segments: list = field(default_factory=list)
    legacy: int = 0
    reordered: int = 0
    last_seq: int = 0
    checkpoint: str = None      # how the replay began: None (from the start) or a summary

    @property
    def missing_records(self):
        return sum(last - first + 1 for first, last, _, _ in self.gaps)


def check(line):
    """``(record, None)`` for a good line (with its newline), else ``(None, reason)``."""
    _, record, reason = framing.parse(line)
    return record, reason


@dataclass
class Start:
    """Where replay begins: after record ``seq``, at ``offset`` in ``segment``."""
    segment: str
    offset: int
    seq: int


class _Sequence:
    """Follows sequence numbers: holes below the next expected seq are kept
    (oldest first) until a late record fills them or the replay ends.
    ``framed`` turns true at the first checksummed record."""

    def __init__(self, after):
        self.next = None if after is None else after + 1
        self.holes = []          # [first, last, segment, line]
        self.framed = False

    def see(self, seq, segment, line):
        """None for a record to apply, "reordered" for one that fills a hole
        (applied), or a reason to skip it."""
        if self.next is None or seq == self.next:
            self.next = seq + 1
            return None
        if seq > self.next:
            self.holes.append([self.next, seq - 1, segment, line])
            self.next = seq + 1
            return None
        for i in range(len(self.holes) - 1, -1, -1):
            hole = self.holes[i]
            if hole[0] <= seq <= hole[1]:
                parts = []
                if hole[0] < seq:
                    parts.append([hole[0], seq - 1, hole[2], hole[3]])
                if seq < hole[1]:
                    parts.append([seq + 1, hole[1], hole[2], hole[3]])
                self.holes[i:i + 1] = parts
                return "reordered"
            if hole[1] < seq:
                break
        return f"duplicate sequence number {seq}"


def replay(directory, found, restore, start=None):
    """Feed each good record of ``found`` (segments, oldest first) to ``restore``.

    With a ``Start`` (from a checkpoint), segments before its segment are not
    read and its segment is read from its offset on.
    """
    report = ReplayReport()
    sequence = _Sequence(None if start is None else start.seq)
    if start is not None:
        report.last_seq = start.seq
        start_index = segments.segment_index(start.segment)
        found = [s for s in found if s.index >= start_index]
        _missing_segments(report, found, start_index)
    else:
        _missing_segments(report, found, None)
    for segment in found:
        report.segments += 1
        offset = start.offset if start is not None and segment.name == start.segment else 0
        _replay_segment(directory, segment.name, offset, restore, report, sequence)
    for first, last, segment, line in sequence.holes:
        report.gaps.append((first, last, segment, line))
        if len(report.gaps) <= LOGGED_SKIPS:
            log.warn("journal: records {first}..{last} are missing (the gap ends before "
                     "{segment} line {line})", first=first, last=last, segment=segment, line=line)
    _log_totals(report)
    return report


def _missing_segments(report, found, start_index):
    """Segment indices absent between the first (or the checkpoint's) and the
    last.  The checkpoint's own segment may be gone (pruned after a long idle
    time): what it held after the checkpoint shows as a gap in the seqs."""
    indices = [s.index for s in found if s.index > 0]
    if not indices:
        return
    low = indices[0] if start_index is None else max(1, start_index + 1)
    present = set(indices)
    for index in range(low, indices[-1]):
        if index not in present:
            name = segments.segment_name(index)
            report.missing_segments.append(name)
            if len(report.missing_segments) <= LOGGED_SKIPS:
                log.error("journal: segment {segment} is missing", segment=name)


def _replay_segment(directory, name, offset, restore, report, sequence):
    number = 0
    try:
        with open(os.path.join(directory, name), "rb") as f:
            if offset:
                size = os.fstat(f.fileno()).st_size
                if size < offset:
                    _skip(report, name, 0, f"{size} bytes, shorter than the checkpoint's "
                                            f"offset {offset}")
                    return
                f.seek(offset)
            for number, line in enumerate(_lines(f), 1):
                if line is None:
                    _skip(report, name, number, "line too long")
                else:
                    _replay_line(report, name, number, line, restore, sequence)
    except OSError as e:
        _skip(report, name, number + 1, f"unreadable: {e.strerror}")


def _lines(f):
    """The lines of ``f`` with their newlines; None for one over MAX_LINE
    (say, a run of zeros a crash left), read past in bounded chunks."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) <= MAX_LINE or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = f.readline(MAX_LINE)
        yield None


def _replay_line(report, segment, number, line, restore, sequence):
    report.bytes += len(line)
    seq, record, reason = framing.parse(line)
    if record is not None:
        if seq is None:
            if sequence.framed:
                record, reason = None, "unchecked record after checksummed ones"
            else:
                report.legacy += 1
        else:
            sequence.framed = True
            order = sequence.see(seq, segment, number)
            if order == "reordered":
                report.reordered += 1
                log.warn("journal: {segment} line {line}: record {seq} is out of order "
                         "(replayed)", segment=segment, line=number, seq=seq)
            elif order is not None:
                record, reason = None, order
            report.last_seq = max(report.last_seq, seq)
    if record is not None:
        try:
            restore(record)
        except Exception as e:
            reason = f"rejected by the consumer: {type(e).__name__}"
            if len(report.skipped) < LOGGED_SKIPS:
                log.failure("journal: {segment} line {line} rejected on replay",
                            segment=segment, line=number)
        else:
            report.records += 1
            return
    _skip(report, segment, number, reason)


def _skip(report, segment, number, reason):
    report.skipped.append((segment, number, reason))
    if len(report.skipped) <= LOGGED_SKIPS:
        log.warn("journal: skipped {segment} line {line}: {reason}",
                 segment=segment, line=number, reason=reason)


def _log_totals(report):
    if len(report.skipped) > LOGGED_SKIPS:
        log.warn("journal: {count} lines skipped in all ({logged} logged)",
                 count=len(report.skipped), logged=LOGGED_SKIPS)
    if len(report.gaps) > LOGGED_SKIPS or len(report.missing_segments) > LOGGED_SKIPS:
        log.error("journal: {gaps} gaps ({records} records) and {segments} segments "
                  "missing in all", gaps=len(report.gaps), records=report.missing_records,
                  segments=len(report.missing_segments))
    if report.legacy:
        log.warn("journal: read {count} records of the format before checksums (not "
                 "verifiable); new records are checksummed and sequenced", count=report.legacy)
