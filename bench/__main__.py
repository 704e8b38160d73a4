"""Run every benchmark with its defaults: ``python -m bench [name ...]``.

A benchmark is a module with ``main(argv)``; list it in BENCHMARKS to run it
here.  The machine's cores and load are printed before and after, since the
figures depend on what else runs.
"""
import importlib
import sys

from bench.report import emit, machine

BENCHMARKS = [
    "bench.tcp_fanout",
    "bench.tcp_latency",
    "bench.idle_connections",
    "bench.journal_throughput",
    "bench.restart",
    "bench.federation",
    "bench.crash",
    "bench.udp_relay",
    "bench.libp2p_circuits",
    "bench.libp2p_hub",
]


def main(argv=None):
    wanted = sys.argv[1:] if argv is None else argv
    emit("machine", when="start", **machine())
    for name in BENCHMARKS:
        if not wanted or name.rsplit(".", 1)[-1] in wanted:
            importlib.import_module(name).main([])
    emit("machine", when="end", **machine())


if __name__ == "__main__":
    main()
