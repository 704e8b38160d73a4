"""Figures as ``<bench> key=value ...`` lines: easy to read and to parse."""
import os


def emit(bench, **fields):
    """Print one result line; floats get 3 significant decimals at most, and
    spaces in text become ``_`` (so that ``parse`` reads the line back)."""
    parts = [bench]
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        elif isinstance(value, str):
            value = value.replace(" ", "_")
        parts.append(f"{key}={value}")
    print(" ".join(parts), flush=True)


def parse(line):
    """``(bench, {key: text})`` for a line printed by ``emit``."""
    bench, *pairs = line.split()
    return bench, dict(pair.split("=", 1) for pair in pairs)


def ratio(ours, theirs):
    return ours / theirs if theirs else float("inf")


def verdict(ok):
    return "met" if ok else "MISSED"


def machine():
    """The facts to print next to figures: cores, CPU model, load."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip().replace(" ", "_")
                    break
    except OSError:
        pass
    load1, load5, _ = os.getloadavg()
    return {"cores": os.cpu_count(), "cpu": model, "load1": load1, "load5": load5}
