"""Delivered messages/s at saturation: 1 sender, N receivers, one topic.

    python -m bench.tcp_fanout [--receivers 10,100] [--seconds 5]
"""
from bench import loadgen, systems

# relayd / mosquitto delivered messages/s that issue 2 asks for, by N.
TARGETS = {10: 1.5, 100: 3.0}


def main(argv=None):
    p = systems.parser(__doc__)
    p.add_argument("--receivers", default="10,100", help="comma-separated N (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured span per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=int, default=500,
                   help="messages the sender may be ahead of the average receiver")
    args = p.parse_args(argv)
    for n in [int(x) for x in args.receivers.split(",")]:
        results = systems.each(
            "tcp_fanout", args.systems,
            lambda server: loadgen.saturate(server, n, args.seconds, args.warmup, args.window),
            receivers=n)
        systems.compare("tcp_fanout", results, "delivered_per_s", TARGETS.get(n, 1.0), receivers=n)


if __name__ == "__main__":
    main()
