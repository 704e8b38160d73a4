"""A dedup window of message ids, bounded in time and in size."""
from collections import deque


SWEEP_EVERY = 1.0     # seconds between sweeps of expired ids


class DedupWindow:
    """Remembers ids for ``window`` seconds, at most ``max_entries`` of them.

    The ids are a set, their order a deque, and their times runs of ids
    added within the same whole second, so that a new id costs one set
    insertion and the oldest one set removal (an OrderedDict of ids and
    times cost twice as much on a full window, most of it cache misses).
    The size bound holds after every ``add``; expired ids are swept at most
    once every ``SWEEP_EVERY`` seconds, a second's ids together once the
    whole second is past the window, so an id may outlive the window by up
    to two seconds.
    """

    def __init__(self, clock, window, max_entries):
        self.clock = clock
        self.window = window
        self.max_entries = max_entries
        self._ids = set()
        self._order = deque()          # the ids, oldest first (and places discarded since)
        self._runs = deque()           # [second, how many places of _order], oldest first
        self._stale = {}               # msg_id -> how many of its first places in _order were discarded
        self._next_sweep = 0.0
        self.hits = 0

    def __contains__(self, msg_id):
        return msg_id in self._ids

    def __len__(self):
        return len(self._ids)

    def admit(self, msg_id):
        """True if ``msg_id`` is new (it is remembered from now), False (and
        counted as a hit) if it was seen: one set insertion either way."""
        ids = self._ids
        known = len(ids)
        ids.add(msg_id)
        if len(ids) == known:
            self.hits += 1
            return False
        self._remember(msg_id, self.clock.seconds())
        return True

    def add(self, msg_id, when=None):
        """Remember ``msg_id`` as added at ``when`` (a journal's or a peer's
        time; now if None or not a finite number)."""
        if msg_id not in self._ids:
            self._ids.add(msg_id)
            self._remember(msg_id, self.clock.seconds(), when)

    def _remember(self, msg_id, now, when=None):
        """Place the id just added to the set in the order and its second's run."""
        try:
            second = int(now if when is None else when)
        except (TypeError, ValueError, OverflowError):
            second = int(now)
        self._order.append(msg_id)
        _tally(self._runs, second)
        while len(self._ids) > self.max_entries:
            self._forget_oldest()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            self._expire(now)

    def discard(self, msg_id):
        """Forget ``msg_id`` (its journal write failed): a retry is new again."""
        if msg_id in self._ids:
            self._ids.remove(msg_id)
            self._stale[msg_id] = self._stale.get(msg_id, 0) + 1

    def _forget_oldest(self):
        msg_id = self._order.popleft()
        run = self._runs[0]
        run[1] -= 1
        if not run[1]:
            self._runs.popleft()
        stale = self._stale.get(msg_id)
        if stale is None:
            self._ids.remove(msg_id)
        elif stale > 1:
            self._stale[msg_id] = stale - 1
        else:
            del self._stale[msg_id]

    def _expire(self, now):
        horizon = now - self.window
        runs = self._runs
        while runs and runs[0][0] + 1 <= horizon:
            for _ in range(runs[0][1]):
                self._forget_oldest()

    def snapshot(self, exclude=()):
        """The ids (oldest first) and the runs of their seconds, for a
        checkpoint; the ids in ``exclude`` (messages not yet durable) are
        left out when it is loaded.  This runs on the reactor thread and
        only copies."""
        return {"ids": list(self._order), "runs": [list(run) for run in self._runs],
                "discarded": list(self._stale.items()), "unsettled": list(exclude)}

    def load_snapshot(self, data):
        """Replace the window with a ``snapshot()`` (or one of the format
        before runs, with a time per id)."""
        order = list(data["ids"])
        if "runs" in data:
            runs = [[int(second), int(count)] for second, count in data["runs"]]
            stale = {msg_id: int(count) for msg_id, count in data.get("discarded", ())}
        else:
            runs, stale = _runs_of(data["times"]), {}
        if sum(count for _, count in runs) != len(order) or any(count < 1 for _, count in runs):
            raise ValueError("the dedup window's runs do not match its ids")
        if any(count < 1 for count in stale.values()):
            raise ValueError("the dedup window counts an id discarded less than once")
        ids = _live(order, stale)
        self._ids, self._order, self._runs, self._stale = ids, deque(order), deque(runs), stale
        for msg_id in data["unsettled"]:
            self.discard(msg_id)
        while len(self._ids) > self.max_entries:
            self._forget_oldest()


def _tally(runs, second):
    """Count one more id added in ``second`` in ``runs``; an older second
    than the newest run's joins that run."""
    if runs and runs[-1][0] >= second:
        runs[-1][1] += 1
    else:
        runs.append([second, 1])


def _runs_of(times):
    """``[[second, count], ...]`` of per-id times (the earlier format)."""
    runs = []
    for when in times:
        _tally(runs, int(when))
    return runs


def _live(order, stale):
    """The ids of ``order`` less the first places ``stale`` counts for each.
    An id placed twice beyond its discarded places is refused: forgetting
    its first place would leave the second pointing at no id."""
    if not stale:
        live = set(order)
    else:
        skip, live = dict(stale), set()
        for msg_id in order:
            if skip.get(msg_id):
                skip[msg_id] -= 1
            else:
                live.add(msg_id)
        if any(skip.values()):
            raise ValueError("the dedup window's discarded ids are not all in its order")
    if len(live) != len(order) - sum(stale.values()):
        raise ValueError("the dedup window's order holds an id twice")
    return live
