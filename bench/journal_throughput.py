"""Journal throughput and ack latency through the real Journal and file thread.

    .venv/bin/python -m bench.journal_throughput [--lines N] [--window W] [--fsync POLICY]
    .venv/bin/python -m bench.journal_throughput --rate 1000 [--lines N]

Saturation (the default): appends N seed-000 sized lines (about 200 bytes)
keeping at most W unacknowledged, the way a busy relay would, and prints
acknowledged lines/s, CPU per line and batch sizes.  ``--rate R``: appends
one line every 1/R s instead and prints the append-to-ack latency.  Both then
time the start-up replay of what was written.  Runs in a temporary directory
on the disk of the working directory and stops by itself.
"""
import argparse
import json
import resource
import shutil
import sys
import tempfile
import time

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from relayd.filepool import FilePool
from relayd.journal import segments
from relayd.journal.replay import replay
from relayd.journal.service import Journal


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


class Load:
    """Drives one journal until ``lines`` are acked, then stops the reactor."""

    def __init__(self, journal, pool, args):
        self.journal, self.pool, self.args = journal, pool, args
        self.lines = [sample_line(n) for n in range(1000)]
        self.sent = self.acked = 0
        self.latencies = []
        self.result = {}

    def begin(self):
        self.pool.startService()
        self.journal.privilegedStartService()
        self.journal.startService()
        self.result.update(start=time.perf_counter(), cpu0=cpu(), thread0=time.thread_time())
        if self.args.rate:
            LoopingCall(self.send_one).start(1.0 / self.args.rate)
        else:
            self.pump()

    def on_ack(self, _, sent_at=None):
        self.acked += 1
        if sent_at is not None:
            self.latencies.append(time.perf_counter() - sent_at)
        if self.acked == self.args.lines:
            r = self.result
            r.update(seconds=time.perf_counter() - r["start"], cpu=cpu() - r["cpu0"],
                     reactor_cpu=time.thread_time() - r["thread0"])
            self.journal.stopService().addBoth(lambda _: self.pool.stopService()).addBoth(
                lambda _: reactor.stop())

    def pump(self):
        budget = min(self.args.window - (self.sent - self.acked), self.args.lines - self.sent)
        append = self.journal.append
        for _ in range(max(0, budget)):
            append(self.lines[self.sent % 1000]).addCallback(self.on_ack)
            self.sent += 1
        if self.sent < self.args.lines:
            reactor.callLater(0, self.pump)

    def send_one(self):
        if self.sent < self.args.lines:
            d = self.journal.append(self.lines[self.sent % 1000])
            d.addCallback(self.on_ack, time.perf_counter())
            self.sent += 1


def report(args, load, registry, replay_seconds):
    r = load.result
    count = registry.get_sample_value("relayd_journal_batch_records_count")
    total = registry.get_sample_value("relayd_journal_batch_records_sum")
    print(f"fsync={args.fsync} lines={args.lines} line_bytes={len(load.lines[0]) + 1} "
          + (f"rate={args.rate}/s" if args.rate else f"window={args.window}"))
    if args.rate:
        lat = sorted(load.latencies[len(load.latencies) // 10:])     # 10% warm-up dropped
        print(f"  append-to-ack latency: p50 {lat[len(lat) // 2] * 1e3:.3f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.3f} ms; "
              f"CPU {r['cpu'] / r['seconds'] * 100:.0f}% of a core")
    else:
        print(f"  {args.lines / r['seconds']:,.0f} lines/s acknowledged ({r['seconds']:.2f} s), "
              f"{count:.0f} batches of {total / count:.0f} lines on average")
        print(f"  CPU per line: {r['cpu'] / args.lines * 1e6:.2f} us in all, "
              f"{r['reactor_cpu'] / args.lines * 1e6:.2f} us on the reactor thread "
              f"(including this load generator's own append loop and ack callbacks)")
    print(f"  start-up replay: {args.lines / replay_seconds:,.0f} lines/s ({replay_seconds:.2f} s)")


def run(args):
    directory = tempfile.mkdtemp(prefix="journal-bench-", dir=".")
    try:
        registry = CollectorRegistry()
        pool = FilePool(reactor)
        journal = Journal(directory, pool, reactor, NoRecords(), fsync=args.fsync,
                          registry=registry, prune_interval=0)
        load = Load(journal, pool, args)
        reactor.callWhenRunning(load.begin)
        reactor.callLater(args.timeout, reactor.stop)
        reactor.run()
        if "seconds" not in load.result:
            sys.exit(f"timed out after {args.timeout}s with {load.acked} of {args.lines} acked")
        start = time.perf_counter()
        replay(directory, segments.scan(directory), NoRecords().restore)
        report(args, load, registry, time.perf_counter() - start)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--fsync", choices=("always", "batch", "never"), default="batch")
    parser.add_argument("--window", type=int, default=2000,
                        help="most unacknowledged lines at once (saturation)")
    parser.add_argument("--rate", type=float, default=0,
                        help="lines per second instead of saturation: measures ack latency")
    parser.add_argument("--timeout", type=float, default=120.0)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
