"""Repeated identical log events: logged a few times a window, the rest counted.

A full disk fails every message and every receipt in the same way; a
hostile peer repeats the same refused request.  ``LogLimiter.admit(key)``
says whether to log this occurrence of ``key`` (the first ``per_window``
in each ``window`` seconds are logged) and how many occurrences were left
out since the last one logged, so the next line can carry the count.
"""
from twisted.python.failure import Failure


class LogLimiter:
    """Per-key log windows on ``clock``; at most ``max_keys`` keys are tracked."""

    def __init__(self, clock, per_window=1, window=60.0, max_keys=10000):
        self.clock = clock
        self.per_window = per_window
        self.window = window
        self.max_keys = max_keys
        self._windows = {}              # key -> [window start, logged in it, left out since]

    def admit(self, key):
        """``(log_it, left_out)``: whether to log this occurrence, and how many
        occurrences of ``key`` were not logged before it."""
        now = self.clock.seconds()
        state = self._windows.get(key)
        if state is None or now - state[0] >= self.window:
            if state is None and len(self._windows) >= self.max_keys:
                self._windows = {k: s for k, s in self._windows.items()
                                 if now - s[0] < self.window}
                if len(self._windows) >= self.max_keys:
                    self._windows = {}
            left_out = 0 if state is None else state[2]
            state = self._windows[key] = [now, 0, left_out]
        if state[1] < self.per_window:
            state[1] += 1
            left_out, state[2] = state[2], 0
            return True, left_out
        state[2] += 1
        return False, 0

    def failure(self, log, key, text, failure=None, **fields):
        """Log the exception being handled (or ``failure``) with
        ``log.failure``, once a window per ``key`` and exception type: a bug
        that traffic can reach must not flood the log."""
        failure = failure or Failure()
        log_it, left_out = self.admit(key + (failure.type,))
        if log_it:
            log.failure(text + "{repeats}", failure, repeats=repeats(left_out), **fields)

    def pending(self, key):
        """Occurrences of ``key`` not logged yet (say, to report when a fault clears)."""
        state = self._windows.get(key)
        return 0 if state is None else state[2]


def repeats(left_out):
    """The suffix for a log line: `` (and N more like it not logged)`` or ""."""
    return f" (and {left_out} more like it not logged)" if left_out else ""


class LogBudget:
    """At most ``per_minute`` log lines a minute per key (a source address, a
    peer) for events untrusted traffic can trigger: ``allow(key)`` says
    whether to log this one.  The first refusal in a minute logs one line
    saying that further ones are only counted (``counted_in``)."""

    def __init__(self, clock, log, what, per_minute=20, counted_in="the metrics"):
        self.log = log
        self.what = what
        self.per_minute = per_minute
        self.counted_in = counted_in
        self._limiter = LogLimiter(clock, per_window=per_minute)

    def allow(self, key):
        log_it, _ = self._limiter.admit(key)
        if not log_it and self._limiter.pending(key) == 1:
            self.log.warn("more than {limit} {what} this minute from {source}; further ones "
                          "are only counted ({counted_in})", limit=self.per_minute,
                          what=self.what, source=key, counted_in=self.counted_in)
        return log_it
