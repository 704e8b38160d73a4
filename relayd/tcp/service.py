"""The TCP relay service: listener, connection caps, idle sweeps, shutdown."""
from prometheus_client import Counter, Gauge
from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relayd.listeners import stream_service
from relayd.tcp.protocol import LEGACY, RelayProtocol

# A closed connection whose peer has not read its last bytes after this many
# seconds is cut (a peer that stops reading would otherwise hold it forever).
CLOSE_GRACE = 30.0


class RelayFactory(Factory):
    def __init__(self, service):
        self.service = service

    def buildProtocol(self, addr):
        return RelayProtocol(self.service)


class TcpRelayService(MultiService):
    """Accepts clients on ``[tcp] listen`` and hands their messages to the router.

    Connection caps (total, per IP) and bans are checked as a connection
    opens; one sweep every few seconds closes idle and never-identified
    connections, so idle connections cost no timers.
    """

    log = Logger()

    def __init__(self, daemon, settings, router, guard):
        super().__init__()
        self.setName("tcp")
        self.clock = daemon.reactor
        self.router = router
        self.guard = guard
        self.connections = set()
        self.per_ip = {}
        self.refused = 0
        self.listen = settings.listen           # a reload moves it (listeners.rebind)
        self.configure(settings)
        self.factory = RelayFactory(self)
        stream_service(daemon, settings.listen, self.factory).setServiceParent(self)
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
        Gauge("relayd_rate_limited", "Messages refused by the per-IP rate limit (total)", **kw
              ).set_function(lambda: self.guard.rate_limited)

    def configure(self, settings):
        self.max_line = settings.max_line
        self.max_connections = settings.max_connections
        self.max_per_ip = settings.max_connections_per_ip
        self.idle_timeout = settings.idle_timeout
        self.handshake_timeout = settings.handshake_timeout
        self.output_buffer = settings.output_buffer
        self.history_limit = settings.history_limit
        self.require_auth = settings.require_auth

    def startService(self):
        super().startService()
        interval = max(0.5, min(self.idle_timeout, self.handshake_timeout) / 4)
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
        if protocol in self.connections:
            self.connections.discard(protocol)
            ip = protocol.address[0]
            left = self.per_ip[ip] - 1
            if left:
                self.per_ip[ip] = left
            else:
                del self.per_ip[ip]

    def drop_ip(self, ip):
        for protocol in [p for p in self.connections if p.address[0] == ip]:
            left = self.guard.banned(ip) or 0
            protocol.close("banned", "this address is temporarily banned", retry_after=round(left, 1))

    def sweep(self):
        """Close connections idle for too long or that never identified, and
        cut closed ones that did not drain within ``CLOSE_GRACE``."""
        now = self.clock.seconds()
        for protocol in list(self.connections):
            if protocol.closed_at is not None:
                if now - protocol.closed_at > CLOSE_GRACE:
                    protocol.transport.abortConnection()
            elif protocol.peer_id is None:
                if now - protocol.connected_at > self.handshake_timeout:
                    protocol.close("idle_timeout", "no hello within the handshake timeout")
            elif protocol.dialect != LEGACY and now - protocol.last_activity > self.idle_timeout:
                protocol.close("idle_timeout", "no traffic within the idle timeout; send ping to stay connected")
        self.guard.sweep()

    def stats(self):
        return {"listen": self.listen, "connections": len(self.connections),
                "addresses": len(self.per_ip), "refused": self.refused,
                "rate_limited": self.guard.rate_limited, "bans": len(self.guard.bans()),
                **self.router.stats()}
