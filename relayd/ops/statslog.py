"""Statistics logged every ``[http] stats_interval`` seconds."""
from twisted.application.internet import TimerService
from twisted.logger import Logger


def flatten(stats, prefix=""):
    """``{"tcp": {"clients": 3}}`` -> ``{"tcp.clients": 3}`` (numbers and strings only)."""
    out = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[name] = value
    return out


class StatsLogger(TimerService):
    """Logs ``daemon.stats()`` as one structured event per interval.

    The event's ``stats`` field holds the full dict (for JSON logs); its text
    is a ``key=value`` line.  A failing stats() is logged, not fatal.
    """

    log = Logger()

    def __init__(self, daemon, interval):
        super().__init__(interval, self.log_stats)
        self.daemon = daemon
        self.clock = daemon.reactor

    def log_stats(self):
        try:
            stats = self.daemon.stats()
        except Exception:
            self.log.failure("collecting statistics failed")
            return
        line = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in flatten(stats).items())
        self.log.info("stats {line}", line=line, stats=stats)
