"""Start-up replay: every good record of every segment, in order.

A torn or corrupt line (a crash mid-write, a full disk, stray bytes) is
skipped and reported with its segment and line number; it never stops the
replay and never hides the lines after it.
"""
import json
import os
from dataclasses import dataclass, field

from twisted.logger import Logger

log = Logger()

# Past this many skipped lines in one start-up, only the total is logged.
LOGGED_SKIPS = 100

# A longer line is corrupt (messages are far smaller) and is skipped unread.
MAX_LINE = 16 * 2 ** 20


@dataclass
class ReplayReport:
    """``records`` restored, ``skipped`` as (segment, line, reason), ``segments`` read."""
    records: int = 0
    skipped: list = field(default_factory=list)
    segments: int = 0
    bytes: int = 0


def check(line):
    """``(record, None)`` for a good line (with its newline), else ``(None, reason)``."""
    if not line.endswith(b"\n"):
        return None, "torn line: no newline at end of segment"
    body = line[:-1]
    if not body.strip():
        return None, "empty line"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid UTF-8"
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):         # RecursionError: nested too deeply
        return None, "invalid JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, None


def replay(directory, segments, restore):
    """Feed each good record of ``segments`` (oldest first) to ``restore``."""
    report = ReplayReport()
    for segment in segments:
        report.segments += 1
        number = 0
        try:
            with open(os.path.join(directory, segment.name), "rb") as f:
                for number, line in enumerate(_lines(f), 1):
                    if line is None:
                        _skip(report, segment.name, number, "line too long")
                    else:
                        _replay_line(report, segment.name, number, line, restore)
        except OSError as e:
            _skip(report, segment.name, number + 1, f"unreadable: {e.strerror}")
    if len(report.skipped) > LOGGED_SKIPS:
        log.warn("journal: {count} lines skipped in all ({logged} logged)",
                 count=len(report.skipped), logged=LOGGED_SKIPS)
    return report


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


def _replay_line(report, segment, number, line, restore):
    report.bytes += len(line)
    record, reason = check(line)
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
