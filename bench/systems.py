"""The servers a benchmark compares, and the command-line bits they share."""
import argparse

from bench import mosquitto
from bench.mosquitto import Mosquitto, MosquittoNoDelay
from bench.relay import Relayd
from bench.report import emit, ratio, verdict

SYSTEMS = {cls.name: cls for cls in (Relayd, Mosquitto, MosquittoNoDelay)}
REFERENCES = ("mosquitto", "mosquitto-nodelay")


def parser(description, repeat=1, systems="relayd,mosquitto,mosquitto-nodelay"):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--systems", default=systems,
                   help="comma-separated servers to drive, of " + ", ".join(SYSTEMS)
                   + " (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=repeat,
                   help="runs per server, alternating servers; the median is kept (default: %(default)s)")
    return p


def each(bench, args, run, **labels):
    """``run(server)`` for each server in ``args.systems``, started fresh,
    ``args.repeat`` times (servers alternate, so that load from elsewhere on
    the machine falls on both); ``{name: median result}``.

    Each run is printed as it comes, then the medians (``run=median``);
    mosquitto is skipped (and said so) when the package is missing.
    """
    runs = {}
    for n in range(args.repeat):
        for name in args.systems.split(","):
            if name in REFERENCES and not mosquitto.available():
                if n == 0:
                    emit(bench, system=name, skipped="mosquitto_not_installed", **labels)
                continue
            with SYSTEMS[name]() as server:
                result = run(server)
            runs.setdefault(name, []).append(result)
            emit(bench, system=name, run=n + 1, **labels, **result)
    results = Results({name: median(found) for name, found in runs.items()})
    results.runs = runs
    if args.repeat > 1:
        for name, result in results.items():
            emit(bench, system=name, run="median", **labels, **result)
    return results


class Results(dict):
    """``{system: median result}``; ``runs`` holds ``{system: [result of each run]}``."""

    def worst(self, name, key):
        """The largest ``key`` over ``name``'s runs (losses, drops)."""
        return max(run[key] for run in self.runs[name])

    def spread(self, name, key):
        """``"low-high"`` of ``key`` over ``name``'s runs, for a table note."""
        values = [run[key] for run in self.runs[name]]
        digits = 0 if min(values) >= 100 else 3
        return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def median(results):
    """Key by key median of result dicts (the upper one of an even count)."""
    return {key: sorted(r[key] for r in results)[len(results) // 2] for key in results[0]}


def check(bench, name, value, target, higher_is_better=True, **labels):
    """Print a ``check=<name> value=... target=... verdict=met|MISSED`` line."""
    ok = value >= target if higher_is_better else value <= target
    emit(bench, check=name, value=value, target=(">=" if higher_is_better else "<=") + f"{target:g}",
         **labels, verdict=verdict(ok))


def compare(bench, results, key, target, higher_is_better=True, **labels):
    """Check relayd / the best mosquitto configuration for ``key`` against ``target``."""
    best = best_reference(results, key, higher_is_better)
    if "relayd" in results and best:
        check(bench, f"relayd/mosquitto_{key}", ratio(results["relayd"][key], results[best][key]),
              target, higher_is_better, against=best, **labels)


def best_reference(results, key, higher_is_better=True):
    """The mosquitto configuration with the best ``key`` (None if none ran)."""
    found = [name for name in REFERENCES if name in results]
    if not found:
        return None
    return (max if higher_is_better else min)(found, key=lambda name: results[name][key])
