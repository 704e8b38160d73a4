"""Restart to serving with a full journal, measured against the real twistd.

    .venv/bin/python -m bench.restart [--size 1GiB] [--tail 16MiB] [--cold]

Builds a journal of ``--size`` bytes of checksummed records (mostly
broadcasts and room messages, some messages to offline peers, half of
those delivered) in a scratch directory, starts ``twistd -n relayd`` on it
and stops it with SIGTERM (which writes a checkpoint), then appends
``--tail`` bytes of records after that checkpoint (what a relay killed
just before its next checkpoint leaves; the default is [journal]
checkpoint_bytes) and times three things from the process start to the
first answered ``hello`` on the TCP port: the restart after a graceful
stop, the restart after the "crash", and (``--cold``) the first start,
which replays the whole journal because there is no checkpoint yet.  It
also prints how long the port refused connections during each start (it
listens before the replay begins).
"""
import argparse
import os
import signal
import time

from bench import targets
from bench.relay import Relayd
from bench.server import ServerError
from bench.report import emit, verdict
from relayd.config import size as parse_size
from relayd.core import message
from relayd.journal.writer import SegmentWriter

TARGET_SECONDS = 2.0
OFFLINE_PEERS = 1000
BATCH = 1000


def build(directory, total, first_seq=1, start_index=1):
    """Write about ``total`` bytes of records; returns the next seq."""
    writer = SegmentWriter(directory, 64 * 2 ** 20, durable=False)
    writer.next_seq, writer.next_index = first_seq, start_index
    now = time.time() - 3600
    n = written = 0
    while written < total:
        lines = []
        for _ in range(BATCH):
            n += 1
            kind = n % 50
            if kind == 0:           # 2%: to an offline peer; every other one delivered
                entry, line = message.new_message(f"sender{n % 97}", f"peer{n % OFFLINE_PEERS}",
                                                  "stored message %d" % n, now + n * 1e-4, "bench")
                lines.append(line)
                if n % 100 == 0:
                    lines.append(message.receipt_line(entry["msg_id"], entry["to"], now))
            elif kind < 10:         # rooms
                _, line = message.new_message(f"sender{n % 97}", "#room%d" % (n % 20),
                                              "a room message of ordinary length, %d" % n,
                                              now + n * 1e-4, "bench", room="room%d" % (n % 20))
                lines.append(line)
            else:                   # broadcasts
                _, line = message.new_message(f"sender{n % 97}", "*",
                                              "a broadcast of ordinary length, number %d" % n,
                                              now + n * 1e-4, "bench")
                lines.append(line)
        _, _, size, _ = writer.write(lines, time.time(), False)
        written += size
    writer.close(True)
    return writer.next_seq, writer.next_index


class JournalRelayd(Relayd):
    """relayd on a data directory the benchmark fills beforehand; kept across starts."""
    name = "relayd-restart"

    def __init__(self):
        super().__init__()
        self.journal = os.path.join(self.workdir, "var", "journal")
        os.makedirs(self.journal)
        self.refused = 0.0

    def start(self, timeout=600.0):
        """Start; returns the seconds until a hello is answered, and sets
        ``refused`` to the seconds until the port first accepted."""
        began = time.monotonic()
        super().start(timeout)
        self.refused = time.monotonic() - began
        try:
            self.connect("probe", False, timeout=timeout).close()
        except OSError as e:
            raise ServerError(f"{self.name} did not answer hello ({e}):\n{self.log()}") from e
        return time.monotonic() - began

    def stop_gracefully(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        self.process = None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1GiB", help="journal size to build (default 1GiB)")
    p.add_argument("--tail", default="16MiB",
                   help="records after the last checkpoint (default: [journal] checkpoint_bytes)")
    p.add_argument("--cold", action="store_true",
                   help="also time the first start, a full replay (minutes for 1 GiB)")
    args = p.parse_args(argv)
    total, tail = parse_size(args.size), parse_size(args.tail)
    relay = JournalRelayd()
    try:
        began = time.monotonic()
        next_seq, next_index = build(relay.journal, total)
        emit("restart", step="build", journal_bytes=total, records=next_seq - 1,
             seconds=time.monotonic() - began)
        if args.cold:
            seconds = relay.start()
            emit("restart", step="first_start_full_replay", serving_s=seconds,
                 refused_s=relay.refused)
        else:
            relay.start()
        relay.stop_gracefully()                 # writes the checkpoint
        after_sigterm = relay.start()
        emit("restart", step="after_sigterm", serving_s=after_sigterm, refused_s=relay.refused,
             target_s=TARGET_SECONDS, verdict=verdict(after_sigterm <= TARGET_SECONDS))
        relay.stop_gracefully()
        segments_now = [n for n in os.listdir(relay.journal) if n.startswith("relay_log.")]
        last_index = max(int(n.split(".")[1]) for n in segments_now)
        last_seq = _last_seq(os.path.join(relay.journal, max(segments_now)))
        build(relay.journal, tail, last_seq + 1, last_index + 1)
        seconds = relay.start()
        emit("restart", step="after_crash", tail_bytes=tail, serving_s=seconds,
             refused_s=relay.refused, target_s=TARGET_SECONDS,
             verdict=verdict(seconds <= TARGET_SECONDS))
        targets.record("restart", max(seconds, after_sigterm),
                       note=f"{after_sigterm:.2f} s after SIGTERM, {seconds:.2f} s after a crash "
                            f"with {args.tail} after the checkpoint",
                       valid=total >= 2 ** 30)
    finally:
        relay.stop()


def _last_seq(path):
    """The seq of the last record in the segment at ``path``."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 65536))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return int(last.split(b" ", 1)[0])


if __name__ == "__main__":
    main()
