"""Latency at a fixed rate: 1 sender, N receivers, one topic.

Each body carries ``time.monotonic_ns()`` taken just before the send; a
receiver subtracts it from the clock read just after its recv, for every
copy.

    python -m bench.tcp_latency [--receivers 10] [--rate 1000] [--seconds 5]
"""
from bench import loadgen, systems, targets


def main(argv=None):
    p = systems.parser(__doc__, repeat=3)
    p.add_argument("--receivers", type=int, default=10)
    p.add_argument("--rate", type=float, default=1000.0, help="messages a second")
    p.add_argument("--seconds", type=float, default=5.0, help="measured span per run")
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    results = systems.each(
        "tcp_latency", args,
        lambda server: loadgen.paced(server, args.receivers, args.rate, args.seconds, args.warmup),
        receivers=args.receivers, rate=int(args.rate))
    if "relayd" in results:
        systems.check("tcp_latency", "relayd_p50_ms", results["relayd"]["p50_ms"], 0.3,
                      higher_is_better=False, receivers=args.receivers)
    systems.compare("tcp_latency", results, "p99_ms", 1.0, higher_is_better=False,
                    receivers=args.receivers)
    if "relayd" in results:
        for key in ("p50_ms", "p99_ms"):
            best = systems.best_reference(results, key, higher_is_better=False)
            targets.record(f"latency_{key[:3]}", results["relayd"][key],
                           results[best][key] if best else None,
                           note=f"median of {args.repeat}: relayd {results.spread('relayd', key)}"
                                + (f", {best} {results.spread(best, key)}" if best else ""),
                           against=best or "",
                           valid=(results.worst("relayd", "lost") == 0 and args.rate == 1000
                                  and args.receivers == 10))


if __name__ == "__main__":
    main()
