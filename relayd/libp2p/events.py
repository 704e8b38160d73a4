"""Structured log events and Prometheus metrics of the libp2p relay."""
from prometheus_client import Counter, Gauge
from twisted.logger import Logger

from relayd.ops.ratelog import LogLimiter

DENIALS_LOGGED_PER_MINUTE = 20      # per source IP; the rest are only counted


class RelayEvents:
    """Receives the relay's accounting events; logs each one and counts it.

    Denials are counted every time but logged at most
    ``DENIALS_LOGGED_PER_MINUTE`` times a minute per source IP, so that a
    peer hammering the relay cannot flood the log.
    """

    log = Logger(namespace="relayd.libp2p")

    def __init__(self, registry, clock):
        self.clock = clock
        self._denials = LogLimiter(clock, per_window=DENIALS_LOGGED_PER_MINUTE)
        self.relayed_bytes = 0
        self.totals = {"reservations_accepted": 0, "reservations_renewed": 0,
                       "circuits_opened": 0, "circuits_closed": 0, "denied": 0}
        self.m_reservation_events = Counter(
            "relayd_libp2p_reservation_events", "Reservation events by kind",
            ["event"], registry=registry)
        self.m_circuits = Counter(
            "relayd_libp2p_circuits_closed", "Circuits closed, by reason", ["reason"],
            registry=registry)
        self.m_circuits_opened = Counter(
            "relayd_libp2p_circuits_opened", "Circuits opened", registry=registry)
        self.m_bytes = Counter(
            "relayd_libp2p_relayed_bytes", "Bytes relayed through circuits (both directions)",
            registry=registry)
        self.m_denied = Counter(
            "relayd_libp2p_denials", "Refused reservation and circuit requests",
            ["request", "reason"], registry=registry)

    def gauges(self, registry, connections, reservations, circuits):
        """Live gauges read from callables at scrape time."""
        for name, doc, read in (
                ("relayd_libp2p_connections", "Open libp2p connections", connections),
                ("relayd_libp2p_reservations", "Live reservations", reservations),
                ("relayd_libp2p_circuits", "Open circuits", circuits)):
            Gauge(name, doc, registry=registry).set_function(read)

    def reservation(self, event, peer, ip, expires):
        if event in ("accepted", "renewed"):
            self.totals["reservations_" + event] += 1
        self.m_reservation_events.labels(event).inc()
        self.log.info("libp2p reservation {event}: peer {peer} from {ip}, expires {expires}",
                      event=event, peer=peer, ip=ip, expires=expires, libp2p_event="reservation")

    def denied(self, request, reason, peer, ip, target=None):
        self.totals["denied"] += 1
        self.m_denied.labels(request, reason.split(":")[0]).inc()
        if self._may_log_denial(ip):
            self.log.info("libp2p {request} denied: peer {peer} from {ip}{to}: {reason}",
                          request=request, reason=reason, peer=peer, ip=ip,
                          to=f" to {target}" if target else "", target=target, libp2p_event="denied")

    def _may_log_denial(self, ip):
        log_it, _ = self._denials.admit(ip)
        if not log_it and self._denials.pending(ip) == 1:
            self.log.warn("libp2p: more than {limit} denials this minute for {ip}; further ones "
                          "are only counted (relayd_libp2p_denials)",
                          limit=DENIALS_LOGGED_PER_MINUTE, ip=ip)
        return log_it

    def circuit_opened(self, circuit):
        self.totals["circuits_opened"] += 1
        self.m_circuits_opened.inc()
        self.log.info("libp2p circuit {id} opened: {src} -> {dst}", id=circuit.id,
                      src=str(circuit.src), dst=str(circuit.dst), libp2p_event="circuit_opened")

    def circuit_closed(self, circuit, reason, duration):
        self.totals["circuits_closed"] += 1
        self.m_circuits.labels(reason).inc()
        self.log.info("libp2p circuit {id} closed ({reason}): {src} -> {dst}, {to_dst} bytes to "
                      "target, {to_src} bytes back, {duration:.1f} s", id=circuit.id, reason=reason,
                      src=str(circuit.src), dst=str(circuit.dst), to_dst=circuit.bytes_to_dst,
                      to_src=circuit.bytes_to_src, duration=duration, libp2p_event="circuit_closed")

    def relayed(self, count):
        self.relayed_bytes += count
        self.m_bytes.inc(count)
