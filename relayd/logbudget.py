"""Bounded logging for events that untrusted traffic can trigger."""

KEYS = 10000        # sources remembered at once


class LogBudget:
    """At most ``per_minute`` log lines a minute per key (a source address, a
    peer): ``allow(key)`` says whether to log this one.  The first refusal
    in a minute logs one line saying that further ones are only counted."""

    def __init__(self, clock, log, what, per_minute=20, counted_in="the metrics"):
        self.clock = clock
        self.log = log
        self.what = what
        self.per_minute = per_minute
        self.counted_in = counted_in
        self._windows = {}          # key -> [window start, events in it]

    def allow(self, key):
        now = self.clock.seconds()
        window = self._windows.get(key)
        if window is None or now - window[0] >= 60:
            if len(self._windows) >= KEYS:
                self._windows = {k: w for k, w in self._windows.items() if now - w[0] < 60}
                if len(self._windows) >= KEYS:
                    return False
            window = self._windows[key] = [now, 0]
        window[1] += 1
        if window[1] == self.per_minute + 1:
            self.log.warn("more than {limit} {what} this minute from {source}; further ones "
                          "are only counted ({counted_in})", limit=self.per_minute,
                          what=self.what, source=key, counted_in=self.counted_in)
        return window[1] <= self.per_minute
