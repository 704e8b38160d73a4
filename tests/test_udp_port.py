"""RendezvousPort: udp.Port.write's behaviour, with each host checked once."""
from twisted.internet import defer, reactor, udp
from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from relayd.udp import port as port_module
from relayd.udp.port import RendezvousPort


class Sink(DatagramProtocol):
    def __init__(self):
        self.received = defer.Deferred()

    def datagramReceived(self, data, address):
        if not self.received.called:
            self.received.callback(data)


class PortTests(unittest.TestCase):
    def setUp(self):
        self.port = RendezvousPort(0, DatagramProtocol(), interface="127.0.0.1", reactor=reactor)
        self.port.startListening()
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_datagrams_arrive_and_later_writes_skip_the_checks(self):
        sink = Sink()
        listening = reactor.listenUDP(0, sink, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        to = ("127.0.0.1", listening.getHost().port)
        full = []
        original = udp.Port.write
        self.patch(udp.Port, "write", lambda port, *a: full.append(a) or original(port, *a))
        self.port.write(b"one", to)
        self.assertEqual((yield sink.received), b"one")
        sink.received = defer.Deferred()
        self.port.write(b"two", to)
        self.assertEqual((yield sink.received), b"two")
        self.assertEqual(full, [(b"one", to)])

    def test_hostnames_and_wrong_families_are_refused_as_by_udp_port(self):
        self.assertRaises(InvalidAddressError, self.port.write, b"x", ("localhost", 1))
        self.assertRaises(InvalidAddressError, self.port.write, b"x", ("::1", 1))
        self.assertEqual(self.port._checked, set())

    def test_errors_on_the_short_path_are_mapped_as_by_udp_port(self):
        self.port.write(b"x", ("127.0.0.1", 9))
        self.assertRaises(MessageLengthError, self.port.write, b"x" * 70000, ("127.0.0.1", 9))

    def test_the_checked_hosts_are_bounded(self):
        self.patch(port_module, "MAX_HOSTS", 2)
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            self.port.write(b"x", (host, 9))
        self.assertLessEqual(len(self.port._checked), 2)
