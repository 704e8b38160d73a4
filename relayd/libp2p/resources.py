"""Reservation and circuit accounting with limits and rate limits (no I/O).

Reservations are keyed by (peer, connection): a RESERVE repeated on the same
connection refreshes the reservation, a peer holding connections from
several places may hold one reservation per connection, up to
``max_reservations_per_peer`` (rust-libp2p's meaning of the setting).
"""
from collections import deque


class RateLimiter:
    """At most ``count`` events per ``window`` seconds for each key (sliding log)."""

    def __init__(self, clock, count, window):
        self.clock = clock
        self.count = count
        self.window = window
        self.events = {}

    def allow(self, key):
        now = self.clock.seconds()
        log = self.events.setdefault(key, deque())
        while log and log[0] <= now - self.window:
            log.popleft()
        if len(log) >= self.count:
            return False
        log.append(now)
        return True

    def prune(self):
        cutoff = self.clock.seconds() - self.window
        for key in [k for k, log in self.events.items() if not log or log[-1] <= cutoff]:
            del self.events[key]


class Reservation:
    __slots__ = ("peer", "connection", "ip", "created", "expires", "timer")

    def __init__(self, peer, connection, ip, created, expires):
        self.peer, self.connection, self.ip = peer, connection, ip
        self.created, self.expires = created, expires
        self.timer = None


class Circuit:
    __slots__ = ("id", "src", "dst", "src_ip", "started", "bytes_to_dst", "bytes_to_src")

    def __init__(self, circuit_id, src, dst, src_ip, started):
        self.id, self.src, self.dst, self.src_ip, self.started = circuit_id, src, dst, src_ip, started
        self.bytes_to_dst = self.bytes_to_src = 0


class Limits:
    """Decides reservations and circuits; the relay records what it grants."""

    def __init__(self, clock, settings):
        self.clock = clock
        self.settings = settings
        self.reservations = {}          # (peer, connection) -> Reservation
        self.circuits = {}              # id -> Circuit
        self.reservation_rate = RateLimiter(clock, settings.reservation_rate, settings.rate_window)
        self.circuit_rate = RateLimiter(clock, settings.circuit_rate, settings.rate_window)

    # --- reservations ---------------------------------------------------------------
    def check_reservation(self, peer, connection, ip):
        """None when allowed, else a denial reason (a short word)."""
        if not self.reservation_rate.allow(ip):
            return "rate-limited"
        if (peer, connection) in self.reservations:
            return None                 # a refresh
        s = self.settings
        if len(self.reservations) >= s.max_reservations:
            return "too-many-reservations"
        if sum(1 for r in self.reservations.values() if r.peer == peer) >= s.max_reservations_per_peer:
            return "too-many-reservations-for-peer"
        if sum(1 for r in self.reservations.values() if r.ip == ip) >= s.max_reservations_per_ip:
            return "too-many-reservations-for-ip"
        return None

    def reservation_for(self, peer):
        """The newest live reservation of ``peer``, or None."""
        found = [r for (p, _), r in self.reservations.items() if p == peer]
        return max(found, key=lambda r: r.created) if found else None

    # --- circuits -------------------------------------------------------------------
    def circuits_of(self, peer):
        return sum(1 for c in self.circuits.values() if peer in (c.src, c.dst))

    def check_circuit_rate(self, ip):
        """None when ``ip`` may make another CONNECT now, else "rate-limited"."""
        return None if self.circuit_rate.allow(ip) else "rate-limited"

    def check_circuit(self, src, dst):
        """None when a circuit from ``src`` to ``dst`` fits the limits, else why not."""
        s = self.settings
        if len(self.circuits) >= s.max_circuits:
            return "too-many-circuits"
        if self.circuits_of(src) >= s.max_circuits_per_peer:
            return "too-many-circuits-for-source"
        if self.circuits_of(dst) >= s.max_circuits_per_peer:
            return "too-many-circuits-for-target"
        return None
