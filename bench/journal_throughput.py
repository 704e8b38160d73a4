"""Journal throughput: lines/s through the real Journal and file thread.

    .venv/bin/python bench/journal_throughput.py [--lines N] [--fsync batch] [--window W]

Appends N seed-000 sized lines (about 250 bytes) keeping at most W
unacknowledged, the way a busy relay would, and prints acknowledged
lines/s, the process CPU per line, the batch sizes seen, and how fast the
result replays at start-up.  Runs in a
temporary directory on the disk of the working directory and stops by itself.
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

from prometheus_client import CollectorRegistry
from twisted.internet import reactor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relayd.filepool import FilePool  # noqa: E402
from relayd.journal import segments  # noqa: E402
from relayd.journal.replay import replay  # noqa: E402
from relayd.journal.service import Journal  # noqa: E402


class NoRecords:
    def restore(self, record):
        pass

    def restore_done(self, report):
        pass


def sample_line(n):
    entry = {"from": "alice", "to": "bob", "body": "hello there, this is message %d" % n,
             "timestamp": 1763776000.123456 + n, "seen_by": ["relay1"], "msg_id": "%064x" % n}
    return json.dumps(entry).encode()


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(args):
    directory = tempfile.mkdtemp(prefix="journal-bench-", dir=".")
    registry = CollectorRegistry()
    pool = FilePool(reactor)
    journal = Journal(directory, pool, reactor, NoRecords(), fsync=args.fsync,
                      registry=registry, prune_interval=0)
    lines = [sample_line(n) for n in range(1000)]
    state = {"sent": 0, "acked": 0}
    result = {}

    def acked(_):
        state["acked"] += 1
        if state["acked"] == args.lines:
            result["seconds"] = time.perf_counter() - result["start"]
            result["cpu"] = cpu() - result["cpu0"]
            result["reactor_cpu"] = time.thread_time() - result["thread0"]
            journal.stopService().addBoth(lambda _: pool.stopService()).addBoth(
                lambda _: reactor.stop())

    def pump():
        budget = min(args.window - (state["sent"] - state["acked"]), args.lines - state["sent"])
        append = journal.append
        for _ in range(max(0, budget)):
            append(lines[state["sent"] % 1000]).addCallback(acked)
            state["sent"] += 1
        if state["sent"] < args.lines:
            reactor.callLater(0, pump)

    def begin():
        pool.startService()
        journal.privilegedStartService()
        journal.startService()
        result["start"], result["cpu0"] = time.perf_counter(), cpu()
        result["thread0"] = time.thread_time()
        pump()

    reactor.callWhenRunning(begin)
    reactor.callLater(args.timeout, reactor.stop)
    reactor.run()
    if "seconds" not in result:
        shutil.rmtree(directory, ignore_errors=True)
        sys.exit(f"timed out after {args.timeout}s with {state['acked']} of {args.lines} acked")
    replay_start = time.perf_counter()
    replay(directory, segments.scan(directory), NoRecords().restore)
    replay_seconds = time.perf_counter() - replay_start
    shutil.rmtree(directory, ignore_errors=True)
    count = registry.get_sample_value("relayd_journal_batch_records_count")
    total = registry.get_sample_value("relayd_journal_batch_records_sum")
    print(f"fsync={args.fsync} lines={args.lines} window={args.window} "
          f"line_bytes={len(lines[0]) + 1}")
    print(f"  {args.lines / result['seconds']:,.0f} lines/s acknowledged "
          f"({result['seconds']:.2f} s), {count:.0f} batches of {total / count:.0f} lines on average")
    print(f"  CPU per line: {result['cpu'] / args.lines * 1e6:.2f} us in all, "
          f"{result['reactor_cpu'] / args.lines * 1e6:.2f} us on the reactor thread "
          f"(including this load generator's own append loop and ack callbacks)")
    print(f"  start-up replay: {args.lines / replay_seconds:,.0f} lines/s "
          f"({replay_seconds:.2f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--fsync", choices=("always", "batch", "never"), default="batch")
    parser.add_argument("--window", type=int, default=20_000,
                        help="most unacknowledged lines at once")
    parser.add_argument("--timeout", type=float, default=120.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
