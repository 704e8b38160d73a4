"""A federation peer that stops reading, over real loopback: what relayd
queues for it stays under ``[federation] link_buffer``, the link stays up,
and once the peer reads again it gets every item (the ones left out by
catch-up from the journal)."""
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from relayd.federation.link import LinkFactory
from tests.test_federation_link import Relay

LINK_BUFFER = 64 << 10
SOCKET_BUFFER = 16 << 10        # small kernel buffers, so that the link's own queue fills soon
MESSAGES = 3000


def wait_for(condition, timeout=60.0, step=0.02):
    """Poll ``condition`` on the reactor until it holds (fails after ``timeout``)."""
    @defer.inlineCallbacks
    def poll():
        for _ in range(int(timeout / step)):
            if condition():
                return
            yield deferLater(reactor, step, lambda: None)
        raise AssertionError("condition not met in time")
    return poll()


class SlowPeerTests(unittest.TestCase):

    def connect(self, a, b):
        a.trust(b)
        b.trust(a)
        port = reactor.listenTCP(0, LinkFactory(b.hub), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            LinkFactory(a.hub, expected=b.id))
        return wait_for(lambda: a.hub.links.get(b.id) and b.hub.links.get(a.id))

    def close(self, *links):
        for link in links:
            link.transport.abortConnection()
        return wait_for(lambda: all(link.state == "closed" for link in links))

    @defer.inlineCallbacks
    def test_a_peer_that_stops_reading_then_resumes_misses_nothing(self):
        a = Relay(self, "relay1", reactor, link_buffer=LINK_BUFFER)
        b = Relay(self, "relay2", reactor, link_buffer=LINK_BUFFER)
        warnings = []
        observer = lambda event: warnings.append(event) if "reads slower" in event.get(
            "log_format", "") else None
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.connect(a, b)
        sender, reader = a.hub.links["relay2"][0], b.hub.links["relay1"][0]
        self.addCleanup(self.close, sender, reader)
        sender.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        reader.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        bob = b.client("bob")
        alice = a.client("alice")
        yield deferLater(reactor, 0.1, lambda: None)     # the handshake's syncs are answered

        reader.transport.pauseProducing()               # relay2 stops reading its socket
        peak = 0
        for n in range(MESSAGES):
            a.send(alice, "*", "%06d " % n + "x" * 300)
            peak = max(peak, sender.queued)
            if n % 50 == 49:
                yield deferLater(reactor, 0, lambda: None)     # the transport writes what it can
        self.assertGreater(sender.skipped, 0, "the queue filled: items were left to catch-up")
        self.assertLessEqual(peak, LINK_BUFFER + 1024)
        behind = a.hub.metrics.items_behind.labels("relay2", "messages")._value.get()
        self.assertEqual(behind, sender.skipped)
        self.assertLess(len(bob.lines), MESSAGES)

        # relay2 reads again, with a buffer that does not make the catch-up crawl
        reader.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        reader.transport.resumeProducing()
        yield wait_for(lambda: len(bob.lines) >= MESSAGES)
        self.assertEqual(sorted(bob.bodies()), ["%06d " % n + "x" * 300 for n in range(MESSAGES)])
        self.assertEqual(a.hub.links["relay2"], [sender], "the link was never dropped")
        self.assertEqual(sender.state, "up")
        self.assertEqual((sender.skipped, sender.queued), (0, 0))
        self.assertEqual(len(warnings), 1, "one warning for the episode")
