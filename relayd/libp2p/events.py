"""Structured log events and Prometheus metrics of the libp2p relay."""
from prometheus_client import Counter, Gauge
from twisted.logger import Logger

from relayd.ops.ratelog import LogBudget

DENIALS_LOGGED_PER_MINUTE = 20      # denials and aborted connections per source IP ...
LOGGED_PER_MINUTE = 200             # ... and from all sources; the rest are only counted


class RelayEvents:
    """Receives the relay's accounting events; logs each one and counts it.

    Denials and aborted connections are counted every time but logged at
    most ``DENIALS_LOGGED_PER_MINUTE`` times a minute per source IP and
    ``LOGGED_PER_MINUTE`` in all, so that peers hammering the relay cannot
    flood the log.
    """

    log = Logger(namespace="relayd.libp2p")

    def __init__(self, registry, clock):
        counted_in = "relayd_libp2p_denials, relayd_libp2p_connections_aborted"
        what = "libp2p denials and aborted connections"
        self._all_log = LogBudget(clock, self.log, what, LOGGED_PER_MINUTE, counted_in)
        self._ip_log = LogBudget(clock, self.log, what, DENIALS_LOGGED_PER_MINUTE, counted_in)
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
        self.m_autonat = Counter(
            "relayd_libp2p_autonat_requests", "AutoNAT dial-back requests, by protocol version "
            "and result", ["version", "result"], registry=registry)
        self.m_aborted = Counter(
            "relayd_libp2p_connections_aborted", "Connections dropped for a protocol error, "
            "timeout or policy, by kind", ["reason"], registry=registry)

    def autonat(self, version, result, ip, addr=None):
        """An AutoNAT request answered (``result``: ok, dial-error, dial-back-error,
        refused, rejected, bad-request)."""
        self.m_autonat.labels(version, result).inc()
        if self._may_log(ip):
            self.log.info("libp2p autonat {version} request from {ip}: {result}{at}",
                          version=version, ip=ip, result=result, at=f" ({addr})" if addr else "",
                          addr=addr, libp2p_event="autonat")

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
        if self._may_log(ip):
            self.log.info("libp2p {request} denied: peer {peer} from {ip}{to}: {reason}",
                          request=request, reason=reason, peer=peer, ip=ip,
                          to=f" to {target}" if target else "", target=target, libp2p_event="denied")

    def aborted(self, kind, reason, ip):
        """A connection was dropped (``kind``: a short word, ``reason``: the detail)."""
        self.m_aborted.labels(kind).inc()
        if self._may_log(ip):
            self.log.info("libp2p connection from {ip} aborted ({kind}): {reason}", ip=ip,
                          kind=kind, reason=reason, libp2p_event="aborted")

    def _may_log(self, ip):
        """At most LOGGED_PER_MINUTE denials and aborts logged a minute in all,
        DENIALS_LOGGED_PER_MINUTE of them per source IP; all are counted."""
        return self._all_log.allow("all sources") and self._ip_log.allow(ip)

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
