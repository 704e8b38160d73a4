"""CPU time and memory of a process, read from /proc, and of this process."""
import os
import resource
import time

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """CPU seconds ``pid`` has run so far: the sum of its live threads' time
    on a CPU in nanoseconds (``/proc/<pid>/task/*/schedstat``) where the
    kernel keeps it; else user + system time in clock ticks (10 ms each: a
    short span may show none)."""
    if not os.path.exists(f"/proc/{pid}/schedstat"):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK   # utime, stime (fields 14, 15)
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue                    # the thread ended meanwhile
    return total / 1e9


def memory_kib(pid):
    """``{"VmRSS": kib, "VmHWM": kib, ...}`` from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm") or key.startswith("Rss"):
                out[key] = int(value.split()[0])
    return out


def rss_kib(pid):
    return memory_kib(pid)["VmRSS"]


def machine_busy_seconds():
    """CPU seconds all cores spent not idle (softirq, i.e. loopback TCP, included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]          # idle, iowait
    return (sum(fields[:8]) - idle) / _TICK


def own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used by a server process and by this load generator over a span."""

    def __init__(self, pid):
        self.pid = pid
        self.start()

    def start(self):
        self._wall = time.monotonic()
        self._server = cpu_seconds(self.pid)
        self._own = own_cpu_seconds()
        self._machine = machine_busy_seconds()

    def read(self):
        """Wall seconds since ``start`` and CPU used meanwhile, in % of one core:
        ``{"server_cpu_pct", "loadgen_cpu_pct", "machine_cpu_pct"}`` (the last
        is every process on every core, so at most 100 x cores)."""
        wall = time.monotonic() - self._wall
        return wall, {
            "server_cpu_pct": (cpu_seconds(self.pid) - self._server) / wall * 100,
            "loadgen_cpu_pct": (own_cpu_seconds() - self._own) / wall * 100,
            "machine_cpu_pct": (machine_busy_seconds() - self._machine) / wall * 100,
        }


def raise_fd_limit():
    """Raise this process's open-file limit to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
