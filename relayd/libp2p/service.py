"""The daemon's ``[libp2p]`` service: listener, relay state, stats and metrics."""
from twisted.application.internet import TimerService, UDPServer
from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from relayd.libp2p import (access, autonat, envelope, identify, messages, multiaddr, ping, quic,
                           websocket, yamux)
from relayd.listeners import stream_service
from relayd.libp2p.connection import Libp2pConnection
from relayd.libp2p.events import RelayEvents
from relayd.libp2p.multiaddr import from_address
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.relay import HopHandler, Relay

AGENT_VERSION = "relayd/0.1"
ADVERTISED = (identify.PROTOCOL_ID, identify.PUSH_PROTOCOL_ID, ping.PROTOCOL_ID,
              messages.HOP_PROTOCOL_ID)
AUTONAT = (autonat.V1, autonat.V2_REQUEST)


class Libp2pFactory(Factory):
    """Builds relay-side connections and keeps the live ones."""

    noisy = False

    protocol = Libp2pConnection
    early_muxers = (yamux.PROTOCOL_ID,)     # saves js/go dialers a multistream round trip

    def __init__(self, reactor, keypair, relay, settings, identify_info):
        self.reactor = reactor
        self.keypair = keypair
        self.relay = relay
        self.settings = settings
        self.handshake_timeout = settings.handshake_timeout
        self.identify_info = identify_info
        self.connections = set()        # every open connection, secured or not
        self.per_ip = {}                # source IP -> open connections
        self.closed_bytes = [0, 0]      # TCP bytes in, out of connections already closed
        self.peers = {}                 # PeerId -> set of muxed connections
        self.observers = []             # connection_ready(conn)/connection_lost(conn) hooks
        self.handlers = {
            identify.PROTOCOL_ID: identify.IdentifyResponder,
            identify.PUSH_PROTOCOL_ID: identify.IdentifyPushSink,
            ping.PROTOCOL_ID: ping.PingResponder,
            messages.HOP_PROTOCOL_ID: HopHandler,
        }
        self.autonat = None
        if settings.autonat:
            self.autonat = autonat.AutoNAT(reactor, keypair, settings, relay.events)
            self.handlers.update({autonat.V1: autonat.V1Handler, autonat.V2_REQUEST: autonat.V2Handler})

    def buildProtocol(self, addr):
        ip = getattr(addr, "host", None)
        proto = super().buildProtocol(addr)
        return proto if self.admit(proto, ip) else None

    def admit(self, connection, ip):
        """Count a new connection from ``ip`` (any transport); False when over the caps."""
        if (len(self.connections) >= self.settings.max_connections
                or self.per_ip.get(ip, 0) >= self.settings.max_connections_per_ip):
            return False
        connection.ip = ip
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.connections.add(connection)
        return True

    def sweep_idle(self, now):
        """Close muxed connections that held no stream and no reservation for
        ``idle_timeout`` (seen idle at two sweeps that far apart)."""
        busy = {conn for conn in (r.connection for r in self.relay.limits.reservations.values())}
        for conn in list(self.connections):
            if conn.session is None or conn.session.streams or conn in busy:
                conn.idle_since = None
            elif conn.idle_since is None:
                conn.idle_since = now
            elif now - conn.idle_since >= self.settings.idle_timeout:
                conn.close()

    def connection_ready(self, connection):
        self.peers.setdefault(connection.remote_peer, set()).add(connection)
        for observer in self.observers:
            observer.connection_ready(connection)

    def wire_bytes(self):
        """TCP bytes received and sent on all libp2p connections, overhead included."""
        live = list(self.connections)
        return (self.closed_bytes[0] + sum(c.bytes_in for c in live),
                self.closed_bytes[1] + sum(c.bytes_out for c in live))

    def connection_lost(self, connection):
        if connection.close_reason is not None:
            self.relay.events.aborted(connection.close_kind, connection.close_reason, connection.ip)
        if connection in self.connections:
            self.closed_bytes[0] += connection.bytes_in
            self.closed_bytes[1] += connection.bytes_out
            self.connections.discard(connection)
            self.per_ip[connection.ip] -= 1
            if not self.per_ip[connection.ip]:
                del self.per_ip[connection.ip]
        conns = self.peers.get(connection.remote_peer)
        if conns is not None and connection in conns:
            conns.discard(connection)
            if not conns:
                del self.peers[connection.remote_peer]
            self.relay.connection_gone(connection)
            for observer in self.observers:
                observer.connection_lost(connection)


class _PortRecorder:
    """Wraps a server endpoint to learn the port it bound (port 0 in tests)."""

    def __init__(self, endpoint, on_port):
        self.endpoint = endpoint
        self.on_port = on_port

    def listen(self, factory):
        return self.endpoint.listen(factory).addCallback(self._got)

    def _got(self, port):
        self.on_port(port)
        return port


# [libp2p] key -> what follows /tcp|udp/<port> in its multiaddr, and whether TLS
# carries it (None: QUIC, on UDP)
LISTENERS = (("listen", "", False), ("ws_listen", "/ws", False), ("wss_listen", "/tls/ws", True),
             ("quic_listen", "/quic-v1", None))


class Libp2pService(MultiService):
    """``[libp2p]``: a Circuit Relay v2 server speaking TCP/Noise/Yamux."""

    log = Logger(namespace="relayd.libp2p")

    def __init__(self, daemon, settings, reactor):
        super().__init__()
        self.setName("libp2p")
        self.daemon = daemon
        self.settings = settings
        self.reactor = reactor
        self.events = RelayEvents(daemon.registry, reactor)
        self.keypair = self.relay = self.factory = None
        self.listen_addrs = []
        self.bound = {}                 # multiaddr suffix -> listen multiaddr with /p2p/<id>
        self.record = None              # (addrs, seq, signed peer record) of the last addrs
        self.started = None
        self.protocols = {}             # protocols other services add: id -> handler factory
        self.observers = []             # and their connection observers
        self.events.gauges(daemon.registry, lambda: len(self.factory.connections) if self.factory else 0,
                           lambda: len(self.relay.limits.reservations) if self.relay else 0,
                           lambda: len(self.relay.limits.circuits) if self.relay else 0)
        stats = TimerService(settings.stats_interval, self.log_stats)
        stats.clock = reactor
        stats.setServiceParent(self)
        daemon.on_reload(lambda new: self.reconfigure(new.get("libp2p")))
        sweep = TimerService(min(30, settings.idle_timeout / 2) or 30, self._sweep)
        sweep.clock = reactor
        sweep.setServiceParent(self)

    def _setup(self):
        if self.keypair is not None:
            return
        self.keypair = KeyPair(self.daemon.identity.private_key)
        self.relay = Relay(self.reactor, self.settings, self.keypair, self.events, self.announce_addrs)
        self.relay.access = access.load(self.settings)     # at start-up, before the reactor runs
        self.factory = Libp2pFactory(self.reactor, self.keypair, self.relay, self.settings,
                                     self.identify_info)
        self.factory.handlers.update(self.protocols)
        self.factory.observers = self.observers
        for key, suffix, tls in LISTENERS:
            description = getattr(self.settings, key)
            if description is None:
                continue
            if tls is None:
                self._quic(description)
                continue
            factory = websocket.ServerFactory(self.factory, suffix) if suffix else self.factory
            listener = stream_service(self.daemon, description, factory, tls=tls)
            listener.endpoint = _PortRecorder(listener.endpoint,
                                              lambda port, suffix=suffix: self._listening(suffix, port))
            listener.setServiceParent(self)

    def _quic(self, address):
        endpoint = quic.QuicEndpoint(self.factory, self.reactor)
        endpoint.on_listening = lambda: self._listening("/quic-v1", endpoint.transport)
        host, port = address
        UDPServer(port, endpoint, interface=host, reactor=self.reactor).setServiceParent(self)

    def privilegedStartService(self):
        self._setup()
        super().privilegedStartService()

    def startService(self):
        self._setup()
        self.started = self.reactor.seconds()
        super().startService()

    def stopService(self):
        """Say GoAway (QUIC: CONNECTION_CLOSE) on every connection and close it,
        then stop listening."""
        for conn in list(self.factory.connections if self.factory else ()):
            conn.close()
        return super().stopService()

    def _sweep(self):
        if self.factory is not None and self.settings.idle_timeout:
            self.factory.sweep_idle(self.reactor.seconds())

    def _listening(self, suffix, port):
        host = port.getHost()
        addr = from_address(host) + suffix             # /udp/N/quic-v1 for QUIC
        self.bound[suffix] = f"{addr}/p2p/{self.keypair.peer_id}"
        self.listen_addrs = [self.bound[s] for _, s, _ in LISTENERS if s in self.bound]
        if host.host in ("0.0.0.0", "::") and not self.settings.announce:
            self.log.warn("[libp2p] listens on all interfaces but announce is empty: peers get "
                          "{addr} in their reservations; set announce to the public address",
                          addr=addr)
        self.push_identify()
        wanted = sum(1 for key, *_ in LISTENERS if getattr(self.settings, key) is not None)
        if len(self.bound) < wanted:
            return
        self.log.info("libp2p circuit relay v2 listening on {addrs} (peer id {peer_id}); "
                      "announcing {announce}", addrs=" ".join(self.listen_addrs),
                      peer_id=str(self.keypair.peer_id), announce=" ".join(self.announce_addrs()))

    def add_protocol(self, protocol_id, handler_factory):
        """Serve (and advertise in identify) ``protocol_id``; ``handler_factory(connection)``
        makes the stream handler.  Called while wiring, before the service starts."""
        self.protocols[protocol_id] = handler_factory

    def add_observer(self, observer):
        """``observer.connection_ready(conn)`` and ``connection_lost(conn)`` for every
        muxed connection."""
        self.observers.append(observer)

    @property
    def peer_id(self):
        return None if self.keypair is None else self.keypair.peer_id

    def announce_addrs(self):
        """Public multiaddrs with ``/p2p/<relay>``: ``announce``, else the listen addresses."""
        suffix = f"/p2p/{self.keypair.peer_id}"
        if self.settings.announce:
            return [a if a.endswith(suffix) else a + suffix for a in self.settings.announce]
        return list(self.listen_addrs)

    def identify_info(self):
        return {"public_key": self.keypair.public_key, "listen_addrs": self.announce_addrs(),
                "protocols": ADVERTISED + (AUTONAT if self.settings.autonat else ()) + tuple(self.protocols),
                "agent_version": AGENT_VERSION,
                "signed_peer_record": self.signed_peer_record()}

    def signed_peer_record(self):
        """The relay's signed PeerRecord of its announce addresses; its seq
        (milliseconds, always growing) changes only with the addresses."""
        addrs = tuple(self.announce_addrs())
        if self.record is None or self.record[0] != addrs:
            seq = int(self.reactor.seconds() * 1000)
            if self.record is not None:
                seq = max(seq, self.record[1] + 1)
            suffix = f"/p2p/{self.keypair.peer_id}"
            raw = [multiaddr.to_bytes(a[:-len(suffix)] if a.endswith(suffix) else a) for a in addrs]
            self.record = (addrs, seq, envelope.peer_record(self.keypair, seq, raw))
        return self.record[2]

    def push_identify(self):
        """Tell every connected peer the relay's addresses changed (identify push)."""
        if self.record is None or self.record[0] == tuple(self.announce_addrs()):
            return
        self.signed_peer_record()
        for conns in list(self.factory.peers.values()):
            for conn in list(conns):
                conn.open_protocol(identify.PUSH_PROTOCOL_ID, identify.IdentifyResponder(conn))

    def reconfigure(self, settings):
        """Apply reloaded limits, rates, timeouts and ``announce`` at once;
        ``listen`` and ``stats_interval`` take effect at the next start."""
        if settings is None:
            self.log.warn("[libp2p] removed from the config: the service stops at the next start")
            return
        for key in ("listen", "ws_listen", "wss_listen", "quic_listen", "stats_interval",
                    "autonat"):
            if getattr(settings, key) != getattr(self.settings, key):
                self.log.warn("[libp2p] {key} changed: takes effect at the next start", key=key)
        self.settings = settings
        self.push_identify()
        self._reload_access(settings)
        if self.relay is not None:
            self.relay.settings = self.relay.limits.settings = self.factory.settings = settings
            self.factory.handshake_timeout = settings.handshake_timeout
            if self.factory.autonat is not None:
                self.factory.autonat.reconfigure(settings)
            for limiter, count in ((self.relay.limits.reservation_rate, settings.reservation_rate),
                                   (self.relay.limits.circuit_rate, settings.circuit_rate)):
                limiter.count, limiter.window = count, settings.rate_window

    def _reload_access(self, settings):
        """Re-read the peer lists on the file pool; a bad file keeps the lists in force."""
        if self.relay is None:
            return
        if settings.allow_peers_file is None and settings.deny_peers_file is None:
            self.relay.set_access(access.PeerAccess())
            return

        def refused(failure):
            self.log.error("reload: {error}; the previous peer lists stay in force",
                           error=failure.getErrorMessage())
        d = self.daemon.file_pool.run(access.load, settings)
        d.addCallbacks(self.relay.set_access, refused)

    # --- views ----------------------------------------------------------------------
    def reservations(self):
        return [] if self.relay is None else self.relay.reservations()

    def circuits(self):
        return [] if self.relay is None else self.relay.circuits()

    def stats(self):
        out = {"peer_id": str(self.peer_id) if self.peer_id else None,
               "listen_addrs": list(self.listen_addrs),
               "relayed_bytes": self.events.relayed_bytes}
        out.update(self.events.totals)
        if self.relay is not None:
            out["wire_bytes_in"], out["wire_bytes_out"] = self.factory.wire_bytes()
            out.update(connections=len(self.factory.connections), peers=len(self.factory.peers),
                       reservations=len(self.relay.limits.reservations),
                       circuits=len(self.relay.limits.circuits))
        return out

    def health(self):
        """None when listening, else why not."""
        if self.running and not self.listen_addrs:
            return "libp2p listener not bound"
        return None

    def log_stats(self):
        if self.relay is None:
            return
        self.relay.limits.reservation_rate.prune()
        self.relay.limits.circuit_rate.prune()
        s = self.stats()
        self.log.info("libp2p stats: {connections} connections, {peers} peers, {reservations} "
                      "reservations, {circuits} circuits, {relayed_bytes} bytes relayed, "
                      "{denied} denials", libp2p_stats=s, **s)
