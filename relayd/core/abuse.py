"""Per-IP rate limits and temporary bans."""
from twisted.logger import Logger


class TokenBucket:
    """``rate`` tokens a second, bursts up to ``capacity``."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, capacity, now):
        self.tokens = float(capacity)
        self.stamp = now


# Seconds a client may come back before the retry_after it was given without
# that counting as ignoring it (the answer rounds retry_after to milliseconds).
RETRY_SLACK = 0.05


class AbuseGuard:
    """Rate-limits messages per source IP and bans the ones that ignore it.

    ``messages`` per ``per_seconds`` (a token bucket, so a burst of
    ``messages`` is allowed).  A refusal tells the client when to come back
    (``retry_after``); a message refused *before* that time is a strike, and
    ``ban_after`` strikes within ``ban_window`` seconds ban the IP for
    ``ban_duration`` seconds.  A client that waits as told is refused at
    most once per wait and never banned.  ``on_ban(ip)`` lets the listeners
    drop that IP's open connections; ``on_ban`` and ``on_unban(ip)`` let a
    cluster node share the change.
    """

    log = Logger()

    def __init__(self, clock, messages, per_seconds, ban_after, ban_window, ban_duration):
        self.clock = clock
        self.on_ban = []
        self.on_unban = []
        self._buckets = {}
        self._strikes = {}
        self._told = {}         # ip -> when its last refusal said a message would pass
        self._bans = {}
        self.rate_limited = 0
        self.configure(messages, per_seconds, ban_after, ban_window, ban_duration)

    def configure(self, messages, per_seconds, ban_after, ban_window, ban_duration):
        self.capacity = messages
        self.rate = messages / per_seconds
        self.ban_after = ban_after
        self.ban_window = ban_window
        self.ban_duration = ban_duration

    def reload(self, settings):
        r = settings.ratelimit
        self.configure(r.messages, r.per_seconds, r.ban_after, r.ban_window, r.ban_duration)

    def banned(self, ip):
        """Seconds left on ``ip``'s ban, or None."""
        until = self._bans.get(ip)
        if until is None:
            return None
        left = until - self.clock.seconds()
        if left <= 0:
            del self._bans[ip]
            return None
        return left

    def allow(self, ip):
        """None when ``ip`` may send one more message, else seconds to wait."""
        now = self.clock.seconds()
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = TokenBucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        self.rate_limited += 1
        wait = (1.0 - bucket.tokens) / self.rate
        if now < self._told.get(ip, now) - RETRY_SLACK:
            self._strike(ip, now)
        self._told[ip] = now + wait
        return wait

    def _strike(self, ip, now):
        strikes = [t for t in self._strikes.get(ip, ()) if t > now - self.ban_window]
        strikes.append(now)
        if len(strikes) >= self.ban_after:
            self._strikes.pop(ip, None)
            self.ban(ip, self.ban_duration, reason="rate limit")
        else:
            self._strikes[ip] = strikes

    def ban(self, ip, seconds, reason="admin"):
        self._bans[ip] = self.clock.seconds() + seconds
        self.log.warn("banned {ip} for {seconds:.0f}s ({reason})", ip=ip, seconds=seconds, reason=reason)
        for hook in self.on_ban:
            hook(ip)

    def unban(self, ip):
        found = self._bans.pop(ip, None) is not None
        self._strikes.pop(ip, None)
        if found:
            self.log.info("unbanned {ip}", ip=ip)
            for hook in self.on_unban:
                hook(ip)
        return found

    def bans(self):
        """``{ip: seconds left}`` for every active ban."""
        return {ip: left for ip in list(self._bans) if (left := self.banned(ip)) is not None}

    def sweep(self):
        """Forget full buckets and old strikes so memory stays bounded."""
        now = self.clock.seconds()
        full_after = self.capacity / self.rate
        self._buckets = {ip: b for ip, b in self._buckets.items() if now - b.stamp < full_after}
        self._strikes = {ip: s for ip, s in self._strikes.items() if s[-1] > now - self.ban_window}
        self._told = {ip: t for ip, t in self._told.items() if t > now}
        self.bans()
