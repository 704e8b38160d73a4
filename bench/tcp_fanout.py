"""Delivered messages/s at saturation: 1 sender, N receivers, one topic.

Also per second of the server's own CPU time, which other load on the
machine disturbs less than the rate.

    python -m bench.tcp_fanout [--receivers 10,100] [--seconds 5]
"""
from bench import loadgen, systems, targets

# relayd / mosquitto delivered messages/s that issue 9 asks for, by N.
TARGETS = {10: 1.5, 100: 5.0}


def main(argv=None):
    p = systems.parser(__doc__, repeat=3)
    p.add_argument("--receivers", default="10,100", help="comma-separated N (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="measured span per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=int, default=10000,
                   help="messages the sender may have unacknowledged (relayd); "
                        "mosquitto (QoS 0, no acks) is fed as fast as its socket takes")
    args = p.parse_args(argv)
    for n in [int(x) for x in args.receivers.split(",")]:
        results = systems.each(
            "tcp_fanout", args,
            lambda server: loadgen.saturate(server, n, args.seconds, args.warmup, args.window),
            receivers=n)
        for key in ("delivered_per_s", "delivered_per_server_cpu_s"):
            systems.compare("tcp_fanout", results, key, TARGETS.get(n, 1.0), receivers=n)
        if n in TARGETS and "relayd" in results:
            best = systems.best_reference(results, "delivered_per_s")
            targets.record(f"fanout_{n}", results["relayd"]["delivered_per_s"],
                           results[best]["delivered_per_s"] if best else None,
                           note=f"{args.window:,} in flight, median of {args.repeat}: relayd "
                                + results.spread("relayd", "delivered_per_s")
                                + (f", {best} {results.spread(best, 'delivered_per_s')}" if best else ""),
                           valid=args.window >= 10000, against=best or "")
            dropped, lost = results.worst("relayd", "dropped"), results.worst("relayd", "lost")
            targets.record(f"fanout_{n}_intact", dropped + lost,
                           note=f"worst of {args.repeat} runs: {dropped} dropped, {lost} lost")


if __name__ == "__main__":
    main()
