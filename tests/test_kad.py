"""[kad]: the routing table, provider and record stores (in memory, with a
Clock), and the DHT server over real loopback connections."""
import json
import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from relayd import config, daemon as daemon_module
from relayd.libp2p import identify, protobuf
from relayd.libp2p.kad import client as kad_client, messages as km
from relayd.libp2p.kad.providers import ProviderStore
from relayd.libp2p.kad.records import Invalid, RecordStore
from relayd.libp2p.kad.routing import RoutingTable, kad_id
from relayd.libp2p.kad.server import rendezvous_key
from relayd.libp2p.kad.service import KadState
from relayd.libp2p.peerid import KeyPair, PeerId

from tests.test_libp2p_relay import dial, wait_until
from tests.test_ownership import HeldPool


def new_peer_id():
    return KeyPair(Ed25519PrivateKey.generate()).peer_id


class RoutingTableTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.own = new_peer_id()
        self.table = RoutingTable(self.own, self.clock, k=3)

    def test_closest_is_the_xor_order(self):
        table = RoutingTable(self.own, self.clock)
        peers = [new_peer_id() for _ in range(60)]
        for p in peers:
            table.add(p, ["/ip4/127.0.0.1/tcp/1"])
        key = b"some key"
        added = [e.peer_id for e in table]
        expected = sorted(added, key=lambda p: kad_id(p.bytes) ^ kad_id(key))[:20]
        self.assertEqual([e.peer_id for e in table.closest(key)], expected)
        self.assertEqual(len(table.closest(key, exclude={expected[0]})), 20)
        self.assertNotIn(expected[0], [e.peer_id for e in table.closest(key, exclude={expected[0]})])
        self.assertFalse(table.add(self.own, []))

    def same_bucket(self, count):
        """``count`` peer ids sharing no leading bit with ours (bucket 0)."""
        out = []
        while len(out) < count:
            p = new_peer_id()
            if (kad_id(p.bytes) ^ kad_id(self.own.bytes)).bit_length() == 256:
                out.append(p)
        return out

    def test_full_bucket_keeps_connected_peers_and_replaces_the_stalest_gone_one(self):
        a, b, c, d, e = self.same_bucket(5)
        for p in (a, b, c):
            self.assertTrue(self.table.add(p, []))
            self.clock.advance(1)
        self.assertFalse(self.table.add(d, []))            # full of connected peers
        self.table.disconnected(b)
        self.clock.advance(1)
        self.table.disconnected(a)                         # a was seen before b
        self.assertTrue(self.table.add(d, []))
        self.assertEqual({x.peer_id for x in self.table}, {b, c, d})
        self.assertTrue(self.table.add(b, ["/ip4/10.0.0.1/tcp/2"]))   # a refresh
        self.assertEqual(self.table.get(b).addrs, ["/ip4/10.0.0.1/tcp/2"])
        self.assertTrue(self.table.get(b).connected)
        self.assertFalse(self.table.add(e, []))


class ProviderStoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = ProviderStore(self.clock, ttl=100, per_key=2, per_peer=2, max_keys=3)
        self.a, self.b, self.c = new_peer_id(), new_peer_id(), new_peer_id()

    def test_expiry_and_refresh(self):
        self.store.add(b"k", self.a, ["/ip4/1.2.3.4/tcp/1"])
        self.clock.advance(60)
        self.store.add(b"k", self.b, [])
        self.assertEqual(self.store.get(b"k"), [(self.a, ["/ip4/1.2.3.4/tcp/1"]), (self.b, [])])
        self.clock.advance(41)
        self.assertEqual(self.store.get(b"k"), [(self.b, [])])
        self.store.add(b"k", self.b, [])                   # re-announcing extends it
        self.clock.advance(99)
        self.store.expire()
        self.assertEqual(self.store.get(b"k"), [(self.b, [])])
        self.assertEqual(len(self.store), 1)

    def test_limits_per_key_per_peer_and_in_total(self):
        self.store.add(b"k", self.a, [])
        self.clock.advance(1)
        self.store.add(b"k", self.b, [])
        self.store.add(b"k", self.c, [])                   # the oldest provider goes
        self.assertEqual({p for p, _ in self.store.get(b"k")}, {self.b, self.c})
        self.assertTrue(self.store.add(b"k2", self.c, []))
        self.assertFalse(self.store.add(b"k3", self.c, []))     # c provides 2 keys already
        self.assertTrue(self.store.add(b"k3", self.a, []))
        self.assertFalse(self.store.add(b"k4", self.a, []))     # 3 keys in total
        self.assertEqual(self.store.refused, 2)

    def test_snapshot_round_trip_skips_expired(self):
        self.store.add(b"k", self.a, ["/ip4/1.2.3.4/tcp/1"])
        self.clock.advance(50)
        self.store.add(b"k2", self.b, [])
        rows = json.loads(json.dumps(self.store.snapshot()))
        self.clock.advance(60)
        again = ProviderStore(self.clock, ttl=100)
        again.restore(rows)
        self.assertEqual(again.get(b"k"), [])
        self.assertEqual(again.get(b"k2"), [(self.b, [])])


class RecordStoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = RecordStore(self.clock, max_age=100, max_size=1024)
        self.keypair = KeyPair(Ed25519PrivateKey.generate())

    def test_public_keys_are_checked_against_the_peer_id(self):
        key = b"/pk/" + self.keypair.peer_id.bytes
        self.store.put(key, self.keypair.public_key, None)
        self.assertEqual(self.store.get(key)[0], self.keypair.public_key)
        other = KeyPair(Ed25519PrivateKey.generate()).public_key
        self.assertRaises(Invalid, self.store.put, key, other, None)
        self.clock.advance(100)
        self.assertIsNone(self.store.get(key))

    def test_unknown_namespaces_and_big_records_are_refused(self):
        self.assertRaises(Invalid, self.store.put, b"/anything/x", b"v", None)
        self.assertRaises(Invalid, self.store.put, b"no-namespace", b"v", None)
        key = b"/pk/" + self.keypair.peer_id.bytes
        self.assertRaises(Invalid, self.store.put, key, b"x" * 1024, None)
        self.assertEqual(self.store.refused, 3)

    def test_relay_advertisements_newest_wins_and_name_their_sender(self):
        me = self.keypair.peer_id

        def ad(ts, peer=me):
            return json.dumps({"peer_id": str(peer), "addresses": ["/ip4/1.2.3.4/tcp/1"],
                               "timestamp": ts}).encode()
        self.store.put(b"/descord/relays", ad(10), me)
        self.assertRaises(Invalid, self.store.put, b"/descord/relays", ad(9), me)
        self.assertRaises(Invalid, self.store.put, b"/descord/relays", ad(20), new_peer_id())
        self.assertRaises(Invalid, self.store.put, b"/descord/relays", b"[1]", me)
        self.store.put(b"/descord/relays", ad(11), me)
        self.assertEqual(json.loads(self.store.get(b"/descord/relays")[0])["timestamp"], 11)


def ask(peer, message, protocol="/ipfs/kad/1.0.0"):
    return kad_client.ask(peer.connection, message, protocol)


def kad_server_peer(peer, protocol="/ipfs/kad/1.0.0"):
    """Make a test Peer answer identify as a DHT server listening at a fixed address."""
    peer.identify_info = lambda: {
        "public_key": peer.keypair.public_key, "listen_addrs": ["/ip4/127.0.0.1/tcp/4999"],
        "protocols": [protocol], "agent_version": "test"}
    peer.handlers[identify.PROTOCOL_ID] = identify.IdentifyResponder


class DhtServerTests(unittest.TestCase):
    timeout = 30

    def build(self, data_dir, extra=""):
        settings = config.parse(f"[relay]\ndata_dir = {data_dir}\n[libp2p]\n"
                                f"listen = tcp:0:interface=127.0.0.1\n[kad]\n{extra}")
        d = daemon_module.build(settings, reactor)
        d.startService()
        return d

    @defer.inlineCallbacks
    def start(self, data_dir, extra=""):
        d = self.build(data_dir, extra)
        self.addCleanup(lambda: d.running and d.stopService())
        libp2p = d.getServiceNamed("libp2p")
        yield wait_until(lambda: libp2p.listen_addrs)
        return d, libp2p, d.getServiceNamed("kad")

    @defer.inlineCallbacks
    def test_find_node_providers_values_and_restart(self):
        data_dir = self.mktemp()
        d, libp2p, kad = yield self.start(data_dir)
        x = yield dial(self, libp2p)
        kad_server_peer(x)
        yield wait_until(lambda: len(kad.dht.table) == 1)       # x speaks kad: in the table
        y = yield dial(self, libp2p)                             # y does not
        yield wait_until(lambda: y.keypair.peer_id in kad.book.peers)

        found = yield ask(y, km.KadMessage(km.FIND_NODE, y.keypair.peer_id.bytes))
        self.assertEqual(found.closer, [(x.keypair.peer_id, ["/ip4/127.0.0.1/tcp/4999"])])
        found = yield ask(x, km.KadMessage(km.FIND_NODE, y.keypair.peer_id.bytes))
        self.assertEqual([p for p, _ in found.closer], [y.keypair.peer_id])  # connected, asked by id

        key = rendezvous_key("/private-chat/1.0.0")
        ask(y, km.KadMessage(km.ADD_PROVIDER, key, providers=[
            (y.keypair.peer_id, ["/ip4/127.0.0.1/tcp/5000"]),
            (x.keypair.peer_id, ["/ip4/6.6.6.6/tcp/1"])])).addErrback(lambda f: None)  # no reply
        yield wait_until(lambda: len(kad.providers) == 1)       # y only: nobody adds another peer
        found = yield ask(x, km.KadMessage(km.GET_PROVIDERS, key))
        self.assertEqual(found.providers, [(y.keypair.peer_id, ["/ip4/127.0.0.1/tcp/5000"])])
        relays = yield ask(y, km.KadMessage(km.GET_PROVIDERS, rendezvous_key("/libp2p/relay")))
        port = libp2p.listen_addrs[0].split("/")[4]
        self.assertEqual(relays.providers, [(libp2p.peer_id, [f"/ip4/127.0.0.1/tcp/{port}"])])

        pk_key = b"/pk/" + y.keypair.peer_id.bytes
        put = km.KadMessage(km.PUT_VALUE, pk_key, record=(pk_key, y.keypair.public_key))
        echoed = yield ask(y, put)
        self.assertEqual(echoed.record, (pk_key, y.keypair.public_key))
        got = yield ask(x, km.KadMessage(km.GET_VALUE, pk_key))
        self.assertEqual(got.record, (pk_key, y.keypair.public_key))
        refused = ask(y, km.KadMessage(km.PUT_VALUE, b"/nope/x", record=(b"/nope/x", b"v")))
        yield self.assertFailure(refused, ConnectionError)
        ad = yield ask(x, km.KadMessage(km.GET_VALUE, b"/descord/relay/advertisements"))
        self.assertEqual(json.loads(ad.record[1])["peer_id"], str(libp2p.peer_id))
        pong = yield ask(x, km.KadMessage(km.PING))
        self.assertEqual(pong.type, km.PING)
        self.assertEqual(d.stats()["kad"]["requests"]["find_node"], 2)

        yield d.stopService()
        again, _, kad2 = yield self.start(data_dir)
        self.assertEqual(kad2.providers.get(key), [(y.keypair.peer_id, ["/ip4/127.0.0.1/tcp/5000"])])
        self.assertEqual(kad2.records.get(pk_key)[0], y.keypair.public_key)

    @defer.inlineCallbacks
    def test_private_protocol_prefix(self):
        d, libp2p, kad = yield self.start(self.mktemp(), "protocol = /myapp/kad/1.0.0\n")
        peer = yield dial(self, libp2p)
        refused = ask(peer, km.KadMessage(km.PING))          # /ipfs/kad/1.0.0 is not served
        yield self.assertFailure(refused, ConnectionError)
        pong = yield ask(peer, km.KadMessage(km.PING), "/myapp/kad/1.0.0")
        self.assertEqual(pong.type, km.PING)
        self.assertIn("/myapp/kad/1.0.0", libp2p.identify_info()["protocols"])

    @defer.inlineCallbacks
    def test_requests_beyond_the_rate_of_an_address_are_refused(self):
        d, libp2p, kad = yield self.start(self.mktemp(), "request_rate = 3\nrequest_window = 1m\n")
        peer = yield dial(self, libp2p)
        for _ in range(3):
            yield ask(peer, km.KadMessage(km.PING))
        yield self.assertFailure(ask(peer, km.KadMessage(km.PING)), ConnectionError)
        self.assertEqual(d.stats()["kad"]["rate_limited"], 1)

    def test_kad_needs_libp2p(self):
        settings = config.parse(f"[relay]\ndata_dir = {self.mktemp()}\n[kad]\n")
        with self.assertRaises(config.ConfigError) as caught:
            daemon_module.build(settings, reactor)
        self.assertIn("[kad] needs a [libp2p] section", str(caught.exception))


# kad_state.json as relayd wrote it before the state became a TableFile
# (providers: key, peer id, expiry, addresses; records: key, value, rank, received).
TODAYS_STATE = (
    '{"providers": [["EiDKoID0WV5KGaDJfdcuT9/036kFmV24NEuCGD4WOGiHeQ==", '
    '"ACQIARIgiojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=", 1800003600.0, '
    '["/ip4/127.0.0.1/tcp/5000"]]], "records": [["L3BrLwAkCAESIIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/'
    'N0iAG0D29c", "CAESIIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c", 0, 1800000000.0]]}')
STATE_PEER = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"


class KadStateTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_100)
        self.path = self.mktemp()
        self.pool = HeldPool()

    def state(self):
        state = KadState(self.path, self.pool, ProviderStore(self.clock, 3600),
                         RecordStore(self.clock, 3600))
        state.load()
        return state

    def test_a_file_in_todays_format_loads_and_is_written_back_the_same(self):
        with open(self.path, "w") as f:
            f.write(TODAYS_STATE)
        state = self.state()
        peer = PeerId.from_string(STATE_PEER)
        key = rendezvous_key("/private-chat/1.0.0")
        self.assertEqual(state.providers.get(key), [(peer, ["/ip4/127.0.0.1/tcp/5000"])])
        self.assertEqual(state.records.get(b"/pk/" + peer.bytes)[0][:4], b"\x08\x01\x12\x20")
        written = state.save()
        self.assertNoResult(written)                     # fires once the file pool wrote it
        self.pool.step()
        self.successResultOf(written)
        with open(self.path) as f:
            self.assertEqual(json.loads(f.read()), json.loads(TODAYS_STATE))

    def test_a_damaged_file_is_set_aside(self):
        with open(self.path, "w") as f:
            f.write('{"providers": [')
        state = self.state()
        self.assertEqual((len(state.providers), len(state.records.records)), (0, 0))
        with open(self.path + ".damaged") as f:
            self.assertEqual(f.read(), '{"providers": [')


class MessageCodecTests(unittest.TestCase):
    def test_round_trip(self):
        p = new_peer_id()
        msg = km.KadMessage(km.GET_PROVIDERS, b"key", record=(b"key", b"value"),
                            closer=[(p, ["/ip4/1.2.3.4/tcp/5"])], providers=[(p, [])])
        back = km.decode(km.encode(msg, connected={p}))
        self.assertEqual((back.type, back.key, back.record, back.closer, back.providers),
                         (km.GET_PROVIDERS, b"key", (b"key", b"value"),
                          [(p, ["/ip4/1.2.3.4/tcp/5"])], [(p, [])]))
        self.assertRaises(ValueError, km.decode, b"\x08\x09")          # type 9
        self.assertEqual(km.decode(random.Random(1).randbytes(0)).type, km.PUT_VALUE)


def cbor(value):
    """A tiny DAG-CBOR encoder for the maps IPNS data holds (test helper)."""
    def head(major, n):
        if n < 24:
            return bytes([major << 5 | n])
        size = next(s for s in (1, 2, 4, 8) if n < 1 << (8 * s))
        return bytes([major << 5 | (24 + (1, 2, 4, 8).index(size))]) + n.to_bytes(size, "big")
    if isinstance(value, int):
        return head(0, value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        return head(3, len(value.encode())) + value.encode()
    items = sorted(value.items(), key=lambda kv: (len(kv[0]), kv[0]))
    return head(5, len(items)) + b"".join(cbor(k) + cbor(v) for k, v in items)


def ipns_record(keypair, seq, validity=b"2030-01-01T00:00:00.000000000Z", value=b"/ipfs/bafkqaaa",
                sign_with=None, v1_value=None):
    data = cbor({"Value": value, "Validity": validity, "ValidityType": 0, "Sequence": seq,
                 "TTL": 3600 * 10 ** 9})
    signature = (sign_with or keypair).sign(b"ipns-signature:" + data)
    return protobuf.encode([(1, v1_value), (5, seq), (8, signature), (9, data)])


class IpnsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)                  # 2027
        self.store = RecordStore(self.clock, max_age=100)
        self.keypair = KeyPair(Ed25519PrivateKey.generate())
        self.key = b"/ipns/" + self.keypair.peer_id.bytes

    def test_the_higher_sequence_wins(self):
        self.store.put(self.key, ipns_record(self.keypair, 2), None)
        self.assertRaises(Invalid, self.store.put, self.key, ipns_record(self.keypair, 1), new_peer_id())
        self.store.put(self.key, ipns_record(self.keypair, 3), new_peer_id())
        self.assertEqual(self.store.get(self.key)[0], ipns_record(self.keypair, 3))

    def test_forged_expired_and_inconsistent_records_are_refused(self):
        other = KeyPair(Ed25519PrivateKey.generate())
        for bad in (ipns_record(self.keypair, 1, sign_with=other),
                    ipns_record(self.keypair, 1, validity=b"2020-01-01T00:00:00Z"),
                    ipns_record(self.keypair, 1, validity=b"next tuesday"),
                    ipns_record(self.keypair, 1, v1_value=b"/ipfs/other"),
                    protobuf.encode([(5, 1)])):
            self.assertRaises(Invalid, self.store.put, self.key, bad, None)
        self.assertRaises(Invalid, self.store.put, b"/ipns/" + other.peer_id.bytes,
                          ipns_record(self.keypair, 1), None)
        self.assertEqual(len(self.store.records), 0)
