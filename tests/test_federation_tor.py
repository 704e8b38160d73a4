"""A .onion peer reached through txtorcon's SOCKS client, without the Tor network.

As txtorcon's own tests do, a fake SOCKS5 server on loopback stands in for
Tor: it answers the CONNECT for the .onion name and then hands the stream
to the peer relay's link, so the whole path (txtorcon SOCKS client ->
handshake -> a relayed message) runs over a real socket.
"""
import struct

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from relayd.federation import peers
from relayd.federation.link import Link, LinkFactory
from tests.test_federation_link import Relay

ONION = "relayd2" + "x" * 49 + ".onion"


class FakeTorSocks(Protocol):
    """SOCKS5 without auth: one CONNECT by domain name, then the peer's link."""

    def __init__(self, factory):
        self.factory = factory
        self.buffer = b""
        self.greeted = False
        self.inner = None

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.buffer += data
        if not self.greeted:
            if len(self.buffer) < 3:
                return
            self.buffer = self.buffer[2 + self.buffer[1]:]
            self.greeted = True
            self.transport.write(b"\x05\x00")
        if len(self.buffer) < 5:
            return
        size = self.buffer[4]
        if len(self.buffer) < 5 + size + 2:
            return
        host = self.buffer[5:5 + size].decode()
        (port,) = struct.unpack("!H", self.buffer[5 + size:7 + size])
        rest = self.buffer[7 + size:]
        self.factory.requests.append((self.buffer[3], host, port))
        self.transport.write(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
        self.inner = Link(self.factory.hub)
        self.inner.makeConnection(self.transport)
        if rest:
            self.inner.dataReceived(rest)

    def connectionLost(self, reason):
        if self.inner is not None:
            self.inner.connectionLost(reason)


class FakeTorFactory(Factory):
    noisy = False

    def __init__(self, hub):
        self.hub = hub
        self.requests = []

    def buildProtocol(self, addr):
        return FakeTorSocks(self)


class OnionPeerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_message_over_an_onion_link(self):
        a = Relay(self, "relay1", reactor)
        b = Relay(self, "relay2", reactor)
        a.trust(b)
        b.trust(a)
        tor = FakeTorFactory(b.hub)
        port = reactor.listenTCP(0, tor, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        socks = f"tcp:127.0.0.1:{port.getHost().port}"
        endpoint = peers.client_endpoint(reactor, f"tcp:{ONION}:55765", socks)
        link = yield endpoint.connect(LinkFactory(a.hub, "relay2"))
        self.addCleanup(link.transport.loseConnection)
        yield link.ready
        self.assertEqual(tor.requests, [(3, ONION, 55765)])   # 3: by domain name
        self.assertEqual(list(a.hub.links), ["relay2"])
        bob = b.client("bob")
        yield a.send(a.client("alice"), "bob", "through tor")
        for _ in range(100):
            if bob.lines:
                break
            yield pause(0.01)
        self.assertEqual(bob.bodies(), ["through tor"])
        self.assertEqual(bob.lines[0]["seen_by"], ["relay1", "relay2"])
        closed = defer.Deferred()
        link.connectionLost = lambda reason, lost=link.connectionLost: (lost(reason),
                                                                        closed.callback(None))
        link.transport.loseConnection()
        yield closed
        for _ in range(100):
            if not b.hub.links:
                break
            yield pause(0.01)


def pause(seconds):
    return deferLater(reactor, seconds, lambda: None)
