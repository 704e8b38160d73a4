"""Run every benchmark with its defaults: ``python -m bench [--short] [name ...]``.

A benchmark is a module with ``main(argv)``; list it in BENCHMARKS (with
the arguments ``make bench`` gives it) to run it here.  The machine's cores
and load are printed before and after, since the figures depend on what
else runs, and at the end the targets table of issues 9, 12 and 15
(``bench.targets``) for the benchmarks that ran.  A benchmark that fails is
reported and the others still run; the exit status is then 1.

``--short`` runs each with tiny counts (seconds, not minutes): a smoke run
of the whole harness whose table has every row but whose figures mean
nothing (tests/test_bench_targets.py).
"""
import argparse
import importlib
import time
import traceback

from bench import targets
from bench.report import emit, machine

# (module, arguments for make bench, arguments for --short)
BENCHMARKS = [
    ("bench.tcp_fanout", [],
     ["--receivers", "10,100", "--seconds", "0.3", "--warmup", "0.1", "--window", "200",
      "--repeat", "1"]),
    ("bench.tcp_latency", [], ["--rate", "200", "--seconds", "0.3", "--warmup", "0.1", "--repeat", "1"]),
    ("bench.idle_connections", [], ["--connections", "50"]),
    ("bench.journal_throughput", [], ["--lines", "2000"]),
    ("bench.restart", [], ["--size", "2MiB", "--tail", "256KiB"]),
    ("bench.federation", [],
     ["--seconds", "0.3", "--warmup", "0.1", "--window", "200", "--repeat", "1", "--rate", "50",
      "--latency-seconds", "0.5", "--mesh", "0"]),
    ("bench.crash", [], ["--kills", "1", "--seconds", "0.3"]),
    ("bench.udp_relay", [], ["--seconds", "0.3", "--peers", "100", "--coturn-messages", "20"]),
    ("bench.libp2p_circuits", ["--mib", "16", "--circuits", "50"], ["--mib", "1", "--circuits", "2"]),
    ("bench.libp2p_hub", [], ["--subscribers", "10,100", "--messages", "5", "--seconds", "1", "--timeout", "5"]),
]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="tiny counts: a smoke run of the harness")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. tcp_fanout")
    args = p.parse_args(argv)
    emit("machine", when="start", **machine())
    began = time.monotonic()
    ran, failed = [], []
    for module, full, short in BENCHMARKS:
        name = module.rsplit(".", 1)[-1]
        if args.names and name not in args.names:
            continue
        ran.append(name)
        started = time.monotonic()
        try:
            importlib.import_module(module).main(short if args.short else full)
        except (Exception, SystemExit) as e:        # SystemExit: a benchmark's own refusal
            traceback.print_exc()
            emit("bench", failed=name, error=type(e).__name__)
            failed.append(name)
        emit("bench", done=name, seconds=time.monotonic() - started)
    end = machine()
    emit("machine", when="end", **end)
    print(f"\nTargets (issues 9, 12, 15), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{end['cores']} cores, load average {end['load1']:.2f} / {end['load5']:.2f} (1 / 5 min), "
          f"{(time.monotonic() - began) / 60:.1f} min:\n")
    print(targets.table(ran), flush=True)
    if failed:
        raise SystemExit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
