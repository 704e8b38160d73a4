"""AutoNAT v1 and v2 servers over real loopback sockets, with a Python client
that listens for the dial-back (127.0.0.0/8 stands for the requester's and
another host's IP; ``autonat_dial_private`` lets the relay dial them)."""
import json
import os
import re
import subprocess

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from relayd.libp2p import autonat, multiaddr, protobuf, varint
from relayd.libp2p.connection import Libp2pConnection
from relayd.libp2p.peer import Peer, Pipe
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.yamux import StreamHandler
from tests.test_libp2p_relay import dial, start_relay, wait_until
from tests.daemon import free_port
from tests.test_libp2p_interop import INTEROP, NODE, SCRIPT, ensure_packages
from tests.test_nat_traversal import (NAT_RULES, NamespacedRelayd, Topology, forward,
                                      netns_unavailable, run)

PRIVATE_OK = "autonat_dial_private = yes\n"


class DialBackAnswer(StreamHandler):
    """The client side of /libp2p/autonat/2/dial-back: records the nonce, answers OK."""

    def __init__(self, connection):
        self.node = connection.factory
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        got = varint.split_prefixed(self.buf, 8192)
        if got is not None:
            self.node.nonces.append(protobuf.decode(got[0])[1][0])
            self.stream.write(varint.prefixed(b""))            # DialBackResponse{OK}
            self.stream.close()


class Listening(Peer):
    """A node listening on ``host`` whose accepted connections are recorded."""

    def __init__(self, testcase, host="127.0.0.1"):
        super().__init__(reactor, KeyPair(Ed25519PrivateKey.generate()))
        self.handlers = {autonat.V2_BACK: DialBackAnswer}
        self.accepted, self.nonces = [], []
        self.port = reactor.listenTCP(0, self, interface=host)
        testcase.addCleanup(self.port.stopListening)
        self.addr = f"/ip4/{host}/tcp/{self.port.getHost().port}"

    def buildProtocol(self, addr):
        proto = Libp2pConnection(initiator=False)
        proto.factory = self
        return proto

    def connection_ready(self, connection):
        self.accepted.append(connection)

    def connection_lost(self, connection):
        pass


@defer.inlineCallbacks
def ask(peer, protocol, *messages, replies=1):
    """Open ``protocol``, send ``messages``, return the decoded replies."""
    pipe = Pipe()
    peer.connection.open_protocol(protocol, pipe)
    yield pipe.opened
    for message in messages:
        pipe.stream.write(varint.prefixed(message))
    out = []

    def parsed():
        out[:] = []
        buf = bytes(pipe.received)
        while True:
            got = varint.split_prefixed(buf, 8192)
            if got is None:
                return len(out) >= replies
            out.append(protobuf.decode(got[0]))
            buf = got[1]
    yield wait_until(parsed, timeout=15)
    return out, pipe


def v1_dial(peer_id, *addrs):
    return protobuf.encode([(1, 0), (2, protobuf.encode(
        [(1, protobuf.encode([(1, peer_id.bytes), (2, [multiaddr.to_bytes(a) for a in addrs])]))]))])


def v1_status(reply):
    response = protobuf.decode(reply[3][0])
    return response[1][0], response.get(3, [None])[0]


def v2_request(nonce, *addrs):
    return protobuf.encode([(1, protobuf.encode([(1, [multiaddr.to_bytes(a) for a in addrs]),
                                                 (2, protobuf.Fixed64(nonce))]))])


class AutoNATTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start(self, extra=PRIVATE_OK):
        self.relay = start_relay(self, extra)
        yield wait_until(lambda: self.relay.listen_addrs)

    def metrics(self):
        return generate_latest(self.relay.daemon.registry).decode()

    @defer.inlineCallbacks
    def client(self, host="127.0.0.1"):
        node = Listening(self, host)
        peer = yield dial(self, self.relay, node.keypair)
        return node, peer

    @defer.inlineCallbacks
    def test_v1_dials_back_on_the_observed_ip_only(self):
        yield self.start()
        node, peer = yield self.client()
        (reply,), _ = yield ask(peer, autonat.V1, v1_dial(node.keypair.peer_id, node.addr))
        self.assertEqual(v1_status(reply), (autonat.V1_OK, multiaddr.to_bytes(node.addr)))
        self.assertEqual(len(node.accepted), 1)
        self.assertEqual(node.accepted[0].remote_peer, self.relay.peer_id)
        self.assertNotEqual(node.accepted[0].transport.getPeer().port, int(self.relay.listen_addrs[0].split("/")[4]))

        elsewhere = Listening(self, "127.0.0.2")               # another host: never dialled
        (reply,), _ = yield ask(peer, autonat.V1, v1_dial(node.keypair.peer_id, elsewhere.addr))
        self.assertEqual(v1_status(reply)[0], autonat.V1_DIAL_REFUSED)
        closed = f"/ip4/127.0.0.1/tcp/{free_port()}"
        (reply,), _ = yield ask(peer, autonat.V1, v1_dial(node.keypair.peer_id, closed))
        self.assertEqual(v1_status(reply)[0], autonat.V1_DIAL_ERROR)
        self.assertEqual(elsewhere.accepted, [])
        metrics = self.metrics()
        for result in ("ok", "refused", "dial-error"):
            self.assertIn(f'relayd_libp2p_autonat_requests_total{{result="{result}",version="v1"}} 1.0',
                          metrics)

    @defer.inlineCallbacks
    def test_v1_refuses_another_peer_id_private_addresses_and_floods(self):
        yield self.start("autonat_rate = 2\n")                 # private addresses not dialled
        node, peer = yield self.client()
        other = KeyPair(Ed25519PrivateKey.generate()).peer_id
        (reply,), _ = yield ask(peer, autonat.V1, v1_dial(other, node.addr))
        self.assertEqual(v1_status(reply)[0], autonat.V1_BAD_REQUEST)
        texts = []
        for _ in range(3):
            (reply,), _ = yield ask(peer, autonat.V1, v1_dial(node.keypair.peer_id, node.addr))
            self.assertEqual(v1_status(reply)[0], autonat.V1_DIAL_REFUSED)
            texts.append(protobuf.decode(reply[3][0])[2][0])
        self.assertEqual(texts, [b"no dialable address on the observed IP"] * 2   # 127.0.0.1
                         + [b"rate limited"])
        self.assertEqual(node.accepted, [])

    @defer.inlineCallbacks
    def test_bytes_after_the_answer_are_dropped_unread(self):
        yield self.start()
        node, peer = yield self.client()
        _, pipe = yield ask(peer, autonat.V1, v1_dial(node.keypair.peer_id, node.addr))
        pipe.stream.write(b"\x00" * 200000)
        server_side, = [c for c in self.relay.factory.connections if c.remote_peer == node.keypair.peer_id]
        handler, = [s.handler for s in server_side.session.streams.values()]
        yield wait_until(lambda: server_side.bytes_in > 200000)
        self.assertEqual(handler.buf, b"")

    @defer.inlineCallbacks
    def test_v2_same_ip_dials_back_with_the_nonce(self):
        yield self.start()
        node, peer = yield self.client()
        (reply,), _ = yield ask(peer, autonat.V2_REQUEST,
                                v2_request(2**64 - 5, node.addr + "/ws", node.addr))
        response = protobuf.decode(reply[2][0])
        self.assertEqual((response[1][0], response[2][0], response[3][0]),
                         (autonat.V2_OK, 1, autonat.DIAL_OK))       # /ws skipped: index 1
        self.assertEqual(node.nonces, [2**64 - 5])

    @defer.inlineCallbacks
    def test_v2_another_ip_costs_dial_data_first(self):
        yield self.start()
        node, peer = yield self.client()
        elsewhere = Listening(self, "127.0.0.2")
        (ask_data,), pipe = yield ask(peer, autonat.V2_REQUEST, v2_request(7, elsewhere.addr))
        self.assertEqual(protobuf.decode(ask_data[3][0]), {1: [0], 2: [30000]})
        self.assertEqual(elsewhere.accepted, [])                 # nothing dialled yet
        chunk = protobuf.encode([(4, protobuf.encode([(1, b"x" * 4096)]))])
        for _ in range(7):
            pipe.stream.write(varint.prefixed(chunk))
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(elsewhere.accepted, [])                 # 28672 < 30000 bytes
        pipe.stream.write(varint.prefixed(chunk))
        yield wait_until(lambda: elsewhere.nonces == [7] and pipe.fin, timeout=10)
        replies = varint.split_prefixed(bytes(pipe.received), 8192)[1]
        response = protobuf.decode(protobuf.decode(varint.split_prefixed(replies, 8192)[0])[2][0])
        self.assertEqual((response[1][0], response[2][0], response[3][0]),
                         (autonat.V2_OK, 0, autonat.DIAL_OK))
        too_big = protobuf.encode([(4, protobuf.encode([(1, b"x" * 5000)]))])
        _, pipe = yield ask(peer, autonat.V2_REQUEST, v2_request(8, elsewhere.addr))
        pipe.stream.write(varint.prefixed(too_big))            # chunks are at most 4096 bytes
        self.assertTrue((yield pipe.done))                      # reset
        self.assertEqual(elsewhere.nonces, [7])


AUTONAT_INI = """
    [relay]
    data_dir = {data_dir}
    [libp2p]
    listen = tcp:4001:interface=11.0.0.1
    autonat_dial_timeout = 3s
"""


class AutoNATInteropTests(unittest.TestCase):
    """js-libp2p's AutoNAT v1 client against relayd, in network namespaces of
    the test's own making (addresses in 11.0.0.0/8, which js-libp2p and the
    relay treat as public; nothing leaves the namespaces)::

        open 11.0.3.2 ------------------------------ pub (relayd on 11.0.0.1)
        natted 10.0.1.2 -- nat (10.0.1.1 | 11.0.1.2) --/

    The natted peer claims a public mapping of its port on the NAT's address
    (as UPnP would); the NAT drops unsolicited connections, so relayd's dial
    back fails and the address stays unverified, and the peer reserves a slot.
    The open peer's address is dialled back and becomes verified.
    """

    timeout = 180

    def setUp(self):
        reason = netns_unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        ensure_packages()
        tag = f"{os.getpid() % 100000}"
        self.ns = {role: f"an{role}{tag}" for role in ("pub", "open", "nat", "natted")}
        self.addCleanup(self.destroy)
        for name in self.ns.values():
            run("ip", "netns", "add", name)
        pub = self.ns["pub"]
        run("ip", "link", "set", "lo", "up", ns=pub)
        run("ip", "addr", "add", "11.0.0.1/32", "dev", "lo", ns=pub)
        Topology._link(pub, "pO", "11.0.3.1/24", self.ns["open"], "eth0", "11.0.3.2/24")
        run("ip", "route", "add", "default", "via", "11.0.3.1", ns=self.ns["open"])
        Topology._link(pub, "pN", "11.0.1.1/24", self.ns["nat"], "wan", "11.0.1.2/24")
        Topology._link(self.ns["nat"], "lan", "10.0.1.1/24", self.ns["natted"], "eth0", "10.0.1.2/24")
        run("ip", "route", "add", "default", "via", "11.0.1.1", ns=self.ns["nat"])
        run("ip", "route", "add", "default", "via", "10.0.1.1", ns=self.ns["natted"])
        forward(self.ns["nat"])
        run("nft", "-f", "-", ns=self.ns["nat"], stdin=NAT_RULES.format(flags=""))
        self.relay = NamespacedRelayd(self, pub, AUTONAT_INI)
        self.relay.start()
        found = re.search(r"listening on (\S+/p2p/\S+)", self.relay.log())
        self.relay_addr = found.group(1)

    def destroy(self):
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def peer(self, role, ip, mapped):
        done = subprocess.run(["ip", "netns", "exec", self.ns[role], NODE, SCRIPT, "autonat-peer",
                               self.relay_addr, ip, "4010", mapped, "12000"], cwd=INTEROP,
                              capture_output=True, text=True, timeout=90)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise AssertionError(f"autonat-peer failed:\n{done.stdout}\n{done.stderr[-3000:]}\n"
                                 f"relayd:\n{self.relay.log()}")
        return json.loads(lines[-1])

    def test_open_peer_is_public_and_natted_peer_is_not(self):
        got = self.peer("open", "11.0.3.2", "-")
        self.assertTrue(got["public_verified"])
        self.assertIn(f"/ip4/11.0.3.2/tcp/4010/p2p/{got['peer']}", got["multiaddrs"])
        log = self.relay.log()
        self.assertIn("autonat v1 request from 11.0.3.2: ok (/ip4/11.0.3.2/tcp/4010)", log)

        got = self.peer("natted", "10.0.1.2", "11.0.1.2")
        self.assertFalse(got["public_verified"])
        self.assertNotIn(f"/ip4/11.0.1.2/tcp/4010/p2p/{got['peer']}", got["multiaddrs"])
        self.assertIn(f"{self.relay_addr}/p2p-circuit/p2p/{got['peer']}", got["multiaddrs"])
        log = self.relay.log()
        self.assertIn("autonat v1 request from 11.0.1.2: dial-error", log)
        self.assertIn(f"reservation accepted: peer {got['peer']} from 11.0.1.2", log)
