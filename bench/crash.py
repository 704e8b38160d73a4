"""kill -9 of relayd at random moments under pipelined load: acked messages lost.

``python -m bench.crash [--kills N] [--seconds S]``: N rounds of load
(senders pipelining directed messages to online acking, online seed-000
and offline recipients) each ended by SIGKILL after up to S seconds, then
one healthy start that delivers what is stored.  Prints the messages acked,
those lost (the target is 0) and the kills.  tests/test_crash.py is the
short version that runs in CI.
"""
import argparse

from bench import targets
from bench.crashload import CrashLoad
from bench.relay import Relayd
from bench.report import emit, verdict

MAILBOX = "\n[mailbox]\nmax_per_peer = 100000000\n"


class CrashedRelayd(Relayd):
    """relayd that can be killed and started again on the same data."""

    def write_config(self, name, text):
        return super().write_config(name, text + MAILBOX)

    def kill(self):
        process, self.process = self.process, None
        process.kill()
        process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.crash")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0, help="longest round")
    args = parser.parse_args(argv)
    load = CrashLoad(senders=2, readers=4, legacy=2, offline=4)
    relay = CrashedRelayd()
    try:
        for _ in range(args.kills):
            relay.start()
            load.round(relay.port, relay.kill, run_for=load.random.uniform(0.2, args.seconds))
        relay.start()
        load.collect(relay.port)
    finally:
        relay.stop()
    lost = len(load.lost())
    online, offline = load.acked_to(load.readers + load.legacy), load.acked_to(load.offline)
    emit("crash", kills=args.kills, acked=len(load.acked), acked_online=online,
         acked_offline=offline, lost=lost, target=verdict(lost == 0))
    targets.record("crash_lost", lost,
                   note=f"{args.kills} kills; acked {online:,} to online, {offline:,} to offline",
                   valid=args.kills >= 5 and online > 0 and offline > 0)


if __name__ == "__main__":
    main()
