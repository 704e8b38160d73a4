"""Token buckets per source, in a bounded table."""
from collections import OrderedDict


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``, one bucket per key.

    At most ``max_keys`` buckets are kept; the least recently used one is
    forgotten first (it would have refilled anyway, give or take).
    """

    def __init__(self, rate, burst, max_keys=65536):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets = OrderedDict()      # key -> [tokens, last refill time]

    def __len__(self):
        return len(self._buckets)

    def _bucket(self, key, now):
        """``key``'s bucket, refilled up to ``burst`` (a fuller one is left as it is)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            tokens = bucket[0]
            if tokens < self.burst:
                bucket[0] = min(self.burst, tokens + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def allow(self, key, now, cost=1.0):
        """Take ``cost`` tokens from ``key``'s bucket; False when it has too few."""
        bucket = self._bucket(key, now)
        if bucket[0] < cost:
            return False
        bucket[0] -= cost
        return True
