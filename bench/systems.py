"""The servers a benchmark compares, and the command-line bits they share."""
import argparse

from bench import mosquitto
from bench.mosquitto import Mosquitto
from bench.relay import Relayd
from bench.report import emit, ratio, verdict

SYSTEMS = {"relayd": Relayd, "mosquitto": Mosquitto}


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--systems", default="relayd,mosquitto",
                   help="comma-separated servers to drive (default: %(default)s)")
    return p


def each(bench, names, run, **labels):
    """``run(server)`` for each named server, started fresh; ``{name: result}``.

    Each result is printed as it comes; mosquitto is skipped (and said so)
    when the package is missing.
    """
    results = {}
    for name in names.split(","):
        if name == "mosquitto" and not mosquitto.available():
            emit(bench, system=name, skipped="mosquitto_not_installed", **labels)
            continue
        with SYSTEMS[name]() as server:
            results[name] = run(server)
        emit(bench, system=name, **labels, **results[name])
    return results


def check(bench, name, value, target, higher_is_better=True, **labels):
    """Print a ``check=<name> value=... target=... verdict=met|MISSED`` line."""
    ok = value >= target if higher_is_better else value <= target
    emit(bench, check=name, value=value, target=(">=" if higher_is_better else "<=") + f"{target:g}",
         **labels, verdict=verdict(ok))


def compare(bench, results, key, target, higher_is_better=True, **labels):
    """Check relayd/mosquitto for ``key`` against ``target``."""
    if "relayd" in results and "mosquitto" in results:
        check(bench, f"relayd/mosquitto_{key}", ratio(results["relayd"][key], results["mosquitto"][key]),
              target, higher_is_better, **labels)
