"""One budget of file descriptors shared by every listener of the daemon.

At start the open-file limit is raised to its hard limit; what is left after
``[relay] fd_reserve`` (journal segments, logs, outbound links, listening
sockets) is the budget for accepted connections.  Each listener is sure of
an equal share of half the budget: a listener may take a new connection
only while the shares the other listeners do not use yet stay free.  So a
flood of idle SSH, HTTP or libp2p connections cannot take the descriptors
the relay's clients and ``/health`` need.  A refused connection is closed at
once, counted in ``relayd_fd_budget_refused_total{listener}`` and logged at
most 20 times a minute per listener.
"""
import resource

from prometheus_client import Counter, Gauge
from twisted.application.service import Service
from twisted.logger import Logger

from relayd.ops.ratelog import LogBudget


class FdBudget(Service):
    log = Logger()

    def __init__(self, reserve, clock, registry, limit=None):
        self.reserve = reserve
        self.limit = limit              # None: the process's open-file limit, read at start
        self.total = None
        self.open = {}                  # listener -> accepted connections open
        self.log_budget = LogBudget(clock, self.log, "connections refused by the fd budget",
                                    counted_in="relayd_fd_budget_refused_total")
        self.refused = Counter("relayd_fd_budget_refused", "Connections refused because a "
                               "listener reached its share of file descriptors",
                               ["listener"], registry=registry)
        Gauge("relayd_fd_budget", "File descriptors for accepted connections, all listeners",
              registry=registry).set_function(lambda: self.total or 0)
        Gauge("relayd_fd_budget_used", "Accepted connections open, all listeners",
              registry=registry).set_function(lambda: sum(self.open.values()))

    def privilegedStartService(self):
        self._size()
        super().privilegedStartService()

    def startService(self):
        self._size()
        super().startService()

    def _size(self):
        if self.total is not None:
            return
        limit = self.limit
        if limit is None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard != resource.RLIM_INFINITY and soft < hard:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                    soft = hard
                except (ValueError, OSError):
                    pass
            limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        self.limit = limit
        self.total = max(limit - self.reserve, 8)
        self.log.info("fd budget: {total} descriptors for connections (open-file limit "
                      "{limit}, [relay] fd_reserve {reserve}), {share} sure for each of "
                      "{count} listeners", total=self.total, limit=limit, reserve=self.reserve,
                      share=self.share(), count=len(self.open))

    def register(self, listener):
        self.open.setdefault(listener, 0)

    def share(self):
        return (self.total or 0) // (2 * max(1, len(self.open)))

    def admit(self, listener):
        """Count a new connection on ``listener`` if the budget allows it."""
        share = self.share()
        kept = sum(max(0, share - used) for name, used in self.open.items() if name != listener)
        if self.total is None or sum(self.open.values()) + kept >= self.total:
            self.refused.labels(listener).inc()
            if self.log_budget.allow(listener):
                self.log.warn("fd budget: refused a connection on [{listener}] ({used} open "
                              "there, {all} of {total} in all)", listener=listener,
                              used=self.open.get(listener, 0), all=sum(self.open.values()),
                              total=self.total)
            return False
        self.open[listener] = self.open.get(listener, 0) + 1
        return True

    def release(self, listener):
        self.open[listener] -= 1

    def stats(self):
        return {"total": self.total, "limit": self.limit, "share": self.share(),
                "open": dict(self.open)}
