"""The [udp] service: wiring, real loopback sockets, stats, peers, metrics."""
import json
import shutil
import socket

from prometheus_client import generate_latest
from twisted.internet import defer, reactor, utils
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial import unittest

from relayd import config
from relayd.daemon import build
from relayd.udp.service import UDPService


WITH_UDP = "[journal]\n[udp]\nlisten = 0\n"


def start_service(testcase, interface="127.0.0.1"):
    """A UDPService on a free port of ``interface``, stopped at the test's end."""
    settings = config.parse(f"[udp]\nlisten = 0\ninterface = {interface}\n").udp
    service = UDPService(settings, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


class Collector(DatagramProtocol):
    """A test client: hands each received datagram to the oldest waiter."""

    def __init__(self):
        self.waiting = []
        self.received = []

    def datagramReceived(self, data, address):
        if self.waiting:
            self.waiting.pop(0).callback(data)
        else:
            self.received.append(data)

    def next(self, timeout=5):
        if self.received:
            return defer.succeed(self.received.pop(0))
        d = defer.Deferred()
        self.waiting.append(d)
        return d.addTimeout(timeout, reactor)


class WiringTests(unittest.TestCase):
    def test_build_adds_the_service_only_with_a_udp_section(self):
        daemon = build(config.parse(WITH_UDP), Clock())
        service = daemon.getServiceNamed("udp")
        self.assertIsInstance(service, UDPService)
        self.assertEqual(service.stats()["peers"], 0)
        self.assertIn(b"relayd_udp_received_total 0.0", generate_latest(daemon.registry))
        self.assertRaises(KeyError, build(config.parse("[journal]\n"), Clock()).getServiceNamed, "udp")

    def test_config_errors_name_the_key(self):
        e = self.assertRaises(config.ConfigError, config.parse, "[udp]\nmax_datagram = 100\n")
        self.assertIn("[udp] max_datagram", str(e))

    def test_reload_applies_new_limits(self):
        daemon = build(config.parse(WITH_UDP), Clock())
        service = daemon.getServiceNamed("udp")
        for hook in daemon._reload_hooks:
            hook(config.parse("[udp]\nlisten = 0\nmax_peers = 7\n"))
        self.assertEqual(service.protocol.table.max_peers, 7)


class UDPClock(Clock):
    """A Clock that also "listens" on UDP, handing protocols a fake transport."""

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.max_packet_size = maxPacketSize
        protocol.makeConnection(FakeDatagramTransport())
        return self

    def stopListening(self):
        return None


class TimerTests(unittest.TestCase):
    def test_keepalive_pass_runs_every_interval(self):
        clock = UDPClock()
        settings = config.parse("[udp]\nkeepalive = 10\nstale_after = 25\n").udp
        service = UDPService(settings, clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(clock.max_packet_size, 8193)      # one more byte: oversize is seen
        transport = service.protocol.transport
        service.protocol.datagramReceived(b'{"type": "register", "name": "a"}', ("192.0.2.1", 1))
        service.protocol.datagramReceived(b'{"type": "register", "name": "b"}', ("192.0.2.2", 2))
        transport.written = []
        clock.advance(10)
        self.assertEqual(sorted(json.loads(d)["type"] for d, _ in transport.written),
                         ["server_keepalive", "server_keepalive"])
        service.protocol.datagramReceived(b'{"type": "keepalive", "name": "b"}', ("192.0.2.2", 2))
        transport.written = []
        clock.advance(10)
        clock.advance(10)          # a is 30 s silent: gone at this pass; b is told
        kinds = [(json.loads(d)["type"], a) for d, a in transport.written]
        self.assertIn(("peer_left", ("192.0.2.2", 2)), kinds)
        self.assertEqual([p["name"] for p in service.peers()], ["b"])


class LoopbackTests(unittest.TestCase):
    def setUp(self):
        self.service = start_service(self)
        self.client = Collector()
        port = reactor.listenUDP(0, self.client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.server = ("127.0.0.1", self.service.port)

    @defer.inlineCallbacks
    def test_register_over_a_real_socket(self):
        self.client.transport.write(b'{"type": "register", "name": "Alice"}', self.server)
        ack = json.loads((yield self.client.next()))
        host = self.client.transport.getHost()
        self.assertEqual(ack["your_address"], f"127.0.0.1:{host.port}")
        self.assertEqual(json.loads((yield self.client.next()))["type"], "peer_list")
        [peer] = self.service.peers()
        self.assertEqual((peer["name"], peer["address"], peer["authenticated"]),
                         ("Alice", f"127.0.0.1:{host.port}", False))
        self.assertEqual(self.service.stats()["registered"], 1)
        self.assertIsNone(self.service.health())


class CoturnStunClientTests(unittest.TestCase):
    """coturn's own STUN client against the rendezvous port."""

    @defer.inlineCallbacks
    def test_turnutils_stunclient_reads_its_address(self):
        if shutil.which("turnutils_stunclient") is None:
            raise unittest.SkipTest("coturn is not installed (tests/debian-packages.txt)")
        service = start_service(self)
        out, err, code = yield utils.getProcessOutputAndValue(
            "timeout", ["10", "turnutils_stunclient", "-p", str(service.port), "127.0.0.1"])
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"UDP reflexive addr: 127\.0\.0\.1:\d+")
        stats = service.stats()
        self.assertEqual((stats.get("stun_success"), stats.get("stun_error")), (1, None))


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class IPv6LoopbackTests(unittest.TestCase):
    """A dual-stack listener (``interface = ::``): IPv6 and IPv4 clients side by side."""

    def setUp(self):
        if not ipv6_loopback():
            raise unittest.SkipTest("this machine has no IPv6 loopback")
        self.service = start_service(self, "::")

    def client(self, interface):
        client = Collector()
        port = reactor.listenUDP(0, client, interface=interface)
        self.addCleanup(port.stopListening)
        return client

    @defer.inlineCallbacks
    def test_ipv6_and_ipv4_addresses(self):
        six = self.client("::1")
        six.transport.write(b'{"type": "register", "name": "six"}', ("::1", self.service.port))
        ack = json.loads((yield six.next()))
        self.assertEqual(ack["your_address"], f"[::1]:{six.transport.getHost().port}")
        four = self.client("127.0.0.1")
        four.transport.write(b'{"type": "register", "name": "four"}', ("127.0.0.1", self.service.port))
        ack = json.loads((yield four.next()))
        self.assertEqual(ack["your_address"], f"127.0.0.1:{four.transport.getHost().port}")
        yield four.next()                                   # peer_list
        four.transport.write(b'{"type": "relay", "target": "six", "payload": "hi"}',
                             ("127.0.0.1", self.service.port))
        while True:
            packet = json.loads((yield six.next()))
            if packet["type"] == "relayed_packet":
                break
        self.assertEqual((packet["from_peer"], packet["payload"]), ("four", "hi"))
