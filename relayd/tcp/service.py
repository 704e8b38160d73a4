"""The TCP relay service: listener, connection caps, idle sweeps, shutdown."""
from prometheus_client import Counter, Gauge
from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relayd.listeners import stream_service
from relayd.tcp.metrics import TCPCollector
from relayd.tcp.protocol import LEGACY, RelayProtocol

# A closed connection whose peer has not read its last bytes after this many
# seconds is cut (a peer that stops reading would otherwise hold it forever).
CLOSE_GRACE = 30.0


class RelayFactory(Factory):
    noisy = False

    def __init__(self, service):
        self.service = service

    def buildProtocol(self, addr):
        return RelayProtocol(self.service)


class TcpRelayService(MultiService):
    """Accepts clients on ``[tcp] listen`` and hands their messages to the router.

    Connection caps (total, per IP) and bans are checked as a connection
    opens; one sweep every few seconds closes idle, stalled and
    never-identified connections, so idle connections cost no timers.

    Flow control: while any connection's output queue is over
    ``output_buffer`` (``congested``), every connection that sends a message
    stops being read (``throttled``) until no queue is over half of it.
    """

    log = Logger()

    def __init__(self, daemon, settings, router, guard):
        super().__init__()
        self.setName("tcp")
        self.clock = daemon.reactor
        self.router = router
        self.guard = guard
        self.connections = set()
        self.congested = set()         # connections whose output queue is over output_buffer
        self.throttled = set()         # connections not read until the congestion clears
        self.per_ip = {}
        self.requests = {}          # extra request type -> handler(protocol, request, req)
        self.send_checks = []       # check(sender, to, body) -> None or (code, text)
        self.refused = 0
        self.bytes_received = self.bytes_sent = 0
        self.listen = settings.listen           # a reload moves it (listeners.rebind)
        self.configure(settings)
        self.factory = RelayFactory(self)
        stream_service(daemon, settings.listen, self.factory,
                       backlog=settings.backlog).setServiceParent(self)
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = daemon.reactor
        guard.on_ban.append(self.drop_ip)
        daemon.on_reload(lambda s: self.configure(s.tcp))
        self._metrics(daemon.registry)

    def _metrics(self, registry):
        kw = {"registry": registry}
        Gauge("relayd_tcp_connections", "Open client connections", **kw).set_function(
            lambda: len(self.connections))
        self.m_refused = Counter("relayd_tcp_refused", "Connections refused", ["reason"], **kw)
        self.m_errors = Counter("relayd_tcp_errors", "Error answers sent to clients", ["code"], **kw)
        Gauge("relayd_banned_addresses", "Addresses under a temporary ban", **kw).set_function(
            lambda: len(self.guard.bans()))
        if registry is not None:
            registry.register(TCPCollector(self))

    def configure(self, settings):
        self.max_line = settings.max_line
        self.max_connections = settings.max_connections
        self.max_per_ip = settings.max_connections_per_ip
        self.idle_timeout = settings.idle_timeout
        self.handshake_timeout = settings.handshake_timeout
        self.output_buffer = settings.output_buffer
        self.stall_timeout = settings.stall_timeout
        self.line_timeout = settings.line_timeout
        self.history_limit = settings.history_limit
        self.require_auth = settings.require_auth

    def startService(self):
        super().startService()
        interval = max(0.5, min(self.idle_timeout, self.handshake_timeout, self.stall_timeout,
                                 self.line_timeout) / 4)
        self._sweeper.start(interval, now=False)
        self.log.info("message relay listening on {listen}", listen=self.listen)

    def stopService(self):
        """Stop accepting, then close every connection (the journal flushes after)."""
        d = super().stopService()
        if self._sweeper.running:
            self._sweeper.stop()
        for protocol in list(self.connections):
            protocol.close("shutting_down", "the relay is shutting down")
        return d

    # --- admission -----------------------------------------------------------

    def admit(self, protocol):
        """None to accept, or ``(code, text, extra)`` to refuse."""
        ip = protocol.address[0]
        left = self.guard.banned(ip)
        if left is not None:
            return self._refuse("banned", "this address is temporarily banned", retry_after=round(left, 1))
        if len(self.connections) >= self.max_connections:
            return self._refuse("too_many_connections", "the relay is full")
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return self._refuse("too_many_connections", "too many connections from your address")
        self.connections.add(protocol)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def _refuse(self, code, text, **extra):
        self.refused += 1
        self.m_refused.labels(code).inc()
        return (code, text, extra)

    def release(self, protocol):
        self.throttled.discard(protocol)
        if protocol in self.congested:
            self.congestion(protocol, False)
        if protocol in self.connections:
            self.connections.discard(protocol)
            ip = protocol.address[0]
            left = self.per_ip[ip] - 1
            if left:
                self.per_ip[ip] = left
            else:
                del self.per_ip[ip]

    # --- flow control ----------------------------------------------------------

    def congestion(self, protocol, congested):
        """``protocol``'s output queue went over ``output_buffer`` (or back
        under half of it); once no queue is over, read every sender again."""
        if congested:
            self.congested.add(protocol)
            return
        self.congested.discard(protocol)
        if not self.congested and self.throttled:
            throttled, self.throttled = self.throttled, set()
            for sender in throttled:
                if sender.closed_at is None:
                    sender.unthrottle()

    def throttle(self, protocol):
        """Stop reading from ``protocol`` (it sends while a reader is
        congested): what it sent after this message waits too."""
        if protocol not in self.throttled:
            self.throttled.add(protocol)
            protocol.throttled = True
            protocol.transport.pauseProducing()

    def drop_ip(self, ip):
        for protocol in [p for p in self.connections if p.address[0] == ip]:
            left = self.guard.banned(ip) or 0
            protocol.close("banned", "this address is temporarily banned", retry_after=round(left, 1))

    def sweep(self):
        """Close connections idle for too long, stalled, sending a line for
        too long or that never identified, and cut closed ones that did not
        drain within ``CLOSE_GRACE``."""
        now = self.clock.seconds()
        for protocol in list(self.connections):
            if protocol.closed_at is not None:
                if now - protocol.closed_at > CLOSE_GRACE:
                    protocol.transport.abortConnection()
            elif protocol.stalled_since is not None and now - protocol.stalled_since > self.stall_timeout:
                protocol.stalled()
            elif protocol.line_started is not None and now - protocol.line_started > self.line_timeout:
                protocol.close("line_timeout", "a line was not completed within the line timeout",
                               limit=self.line_timeout)
            elif protocol.peer_id is None:
                if now - protocol.connected_at > self.handshake_timeout:
                    protocol.close("idle_timeout", "no hello within the handshake timeout")
            elif protocol.dialect != LEGACY and now - protocol.last_activity > self.idle_timeout:
                protocol.close("idle_timeout", "no traffic within the idle timeout; send ping to stay connected")
        self.guard.sweep()

    def stats(self):
        return {"listen": self.listen, "connections": len(self.connections),
                "addresses": len(self.per_ip), "refused": self.refused,
                "congested": len(self.congested), "throttled": len(self.throttled),
                "rate_limited": self.guard.rate_limited, "bans": len(self.guard.bans()),
                **self.router.stats()}

