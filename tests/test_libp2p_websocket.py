"""libp2p over WebSocket (/ws and /tls/ws) on real loopback sockets, Python peers."""
import socket

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest
from twisted.internet import defer, reactor, ssl
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd import config, tls_ca
from relayd.libp2p import messages as m, multiaddr, protobuf, websocket
from relayd.libp2p.peer import Peer, Pipe
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.service import Libp2pService
from relayd.tls import ServerTLS
from tests.test_libp2p_relay import ask_identify, dial, fake_daemon, wait_until
from tests.test_ops_support import InlinePool


def start(testcase, extra="", tls=None):
    text = ("[libp2p]\nlisten = tcp:0:interface=127.0.0.1\n"
            "ws_listen = tcp:0:interface=127.0.0.1\n" + extra)
    if tls is not None:
        text += f"[tls]\ncert = {tls}/relay1.pem\nkey = {tls}/relay1.key\nlisteners =\n"
    settings = config.parse(text)
    daemon = fake_daemon(settings)
    if tls is not None:
        daemon.tls = ServerTLS(settings.tls, reactor, InlinePool())
        daemon.tls.startService()
    service = Libp2pService(daemon, settings.libp2p, reactor)
    service.startService()
    testcase.addCleanup(lambda: service.running and service.stopService())
    return service


def port_of(addr):
    return int(addr.split("/tcp/")[1].split("/")[0])


@defer.inlineCallbacks
def dial_ws(testcase, addr, tls_context=None):
    """A Python peer connected over the WebSocket listener at ``addr``."""
    peer = Peer(reactor, KeyPair(Ed25519PrivateKey.generate()))
    scheme = "wss" if tls_context else "ws"
    factory = websocket.ClientFactory(peer, f"{scheme}://localhost:{port_of(addr)}/")
    if tls_context:
        connector = reactor.connectSSL("127.0.0.1", port_of(addr), factory, tls_context)
    else:
        connector = reactor.connectTCP("127.0.0.1", port_of(addr), factory)

    def disconnect():
        connector.disconnect()
        return peer.lost
    testcase.addCleanup(disconnect)
    yield peer.ready
    return peer


class Sender(Protocol):
    """Sends ``data``, then waits for the server to close."""

    def __init__(self, data):
        self.data = data
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def connectionLost(self, reason):
        self.closed.callback(None)


class WebSocketTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.relay = start(self)
        yield wait_until(lambda: len(self.relay.listen_addrs) == 2)
        self.tcp_addr, self.ws_addr = self.relay.listen_addrs

    @defer.inlineCallbacks
    def test_reserve_over_ws_and_relay_to_a_tcp_peer(self):
        peer_id = self.relay.peer_id
        self.assertTrue(self.ws_addr.endswith(f"/ws/p2p/{peer_id}"))
        a = yield dial_ws(self, self.ws_addr)
        b = yield dial(self, self.relay)
        _, _, status, fields = yield a.reserve()
        self.assertEqual(status, m.OK)
        arriving = a.next_circuit()
        pipe_b = Pipe()
        self.assertEqual((yield b.connect(a.keypair.peer_id, pipe_b))[2], m.OK)
        pipe_a = yield arriving
        payload = bytes(range(256)) * 1024
        pipe_b.stream.write(payload)
        self.assertEqual((yield pipe_a.wait_for(len(payload))), payload)
        pipe_a.stream.write(payload[::-1])
        self.assertEqual((yield pipe_b.wait_for(len(payload))), payload[::-1])
        self.assertEqual(self.relay.stats()["connections"], 2)
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn("relayd_libp2p_connections 2.0", metrics)

    @defer.inlineCallbacks
    def test_identify_over_ws_lists_every_listener(self):
        a = yield dial_ws(self, self.ws_addr)
        info = yield ask_identify(a.connection)
        self.assertEqual(info["listen_addrs"], [self.tcp_addr, self.ws_addr])
        local = a.connection.transport.getHost()
        self.assertEqual(info["observed_addr"], f"/ip4/127.0.0.1/tcp/{local.port}/ws")
        sock = a.connection.transport.transport.getHandle()
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        server_side, = self.relay.factory.connections
        sock = server_side.transport.transport.getHandle()
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @defer.inlineCallbacks
    def test_bad_websocket_requests_are_counted_not_logged_each(self):
        with capturedLogs() as logged:
            for request in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",       # no Upgrade
                            b"\x16\x03\x01garbage\r\n\r\n") * 15:
                client = Sender(request)
                reactor.connectTCP("127.0.0.1", port_of(self.ws_addr), ClientFactory.forProtocol(
                    lambda: client))
                yield client.closed
            yield wait_until(lambda: not self.relay.factory.connections)
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn('relayd_libp2p_connections_aborted_total{reason="websocket"} 30.0', metrics)
        self.assertEqual(len([e for e in logged if e.get("libp2p_event") == "aborted"]), 20)
        self.assertEqual([e for e in logged if "WebSocket" in e.get("log_format", "")
                          and e.get("libp2p_event") != "aborted"], [])

    @defer.inlineCallbacks
    def test_an_endless_opening_handshake_is_cut_off(self):
        client = Sender(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 20000)
        reactor.connectTCP("127.0.0.1", port_of(self.ws_addr), ClientFactory.forProtocol(
            lambda: client))
        yield client.closed                 # well before the handshake timeout
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn('relayd_libp2p_connections_aborted_total{reason="websocket"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_text_messages_drop_the_connection(self):
        a = yield dial_ws(self, self.ws_addr)
        a.connection.transport.sendMessage(b"hello", isBinary=False)
        yield a.lost
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn('relayd_libp2p_connections_aborted_total{reason="websocket"} 1.0', metrics)


class SecureWebSocketTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_reserve_over_tls_ws_with_the_tls_certificate(self):
        pki = self.mktemp()
        tls_ca.init_ca(pki)
        tls_ca.issue(pki, "relay1")
        relay = start(self, "wss_listen = tcp:0:interface=127.0.0.1\n", tls=pki)
        yield wait_until(lambda: len(relay.listen_addrs) == 3)
        wss_addr = relay.listen_addrs[2]
        self.assertTrue(wss_addr.endswith(f"/tls/ws/p2p/{relay.peer_id}"))
        with open(f"{pki}/ca.pem") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        a = yield dial_ws(self, wss_addr, ssl.optionsForClientTLS("localhost", trust))
        _, _, status, fields = yield a.reserve()
        self.assertEqual(status, m.OK)
        self.assertEqual(relay.reservations()[0]["peer"], str(a.keypair.peer_id))

    @defer.inlineCallbacks
    def test_announced_tls_ws_address_goes_into_reservations(self):
        relay = start(self, "announce = /dns4/relay.example.org/tcp/443/tls/ws\n")
        yield wait_until(lambda: len(relay.listen_addrs) == 2)
        a = yield dial_ws(self, relay.listen_addrs[1])
        _, _, status, fields = yield a.reserve()
        addrs = protobuf.decode(fields[3][0])[2]
        self.assertEqual([multiaddr.to_string(x) for x in addrs],
                         [f"/dns4/relay.example.org/tcp/443/tls/ws/p2p/{relay.peer_id}"])

