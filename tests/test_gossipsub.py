"""GossipSub: mesh maintenance, the message and seen caches, gossip,
signatures and penalties, on in-memory links with an injected clock."""
import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd import config
from relayd.libp2p.gossipsub import messages as gm
from relayd.libp2p.gossipsub.mcache import MessageCache, SeenCache
from relayd.libp2p.gossipsub.router import GossipRouter, Params
from relayd.libp2p.peerid import KeyPair


class MemoryLink:
    """A peer's side of the link: the RPCs the router sent it, decoded."""

    def __init__(self):
        self.rpcs = []
        self.backlog = 0

    def send(self, data):
        self.rpcs.append(gm.decode(data))

    def queued(self):
        return self.backlog

    def take(self):
        rpcs, self.rpcs = self.rpcs, []
        return rpcs

    def grafts(self):
        return [t for r in self.rpcs for t in r.graft]

    def prunes(self):
        return [p for r in self.rpcs for p in r.prune]

    def published(self):
        return [m for r in self.rpcs for m in r.publish]


def keypair():
    return KeyPair(Ed25519PrivateKey.generate())


class Net:
    """A router under test and fake peers linked to it."""

    def __init__(self, **params):
        self.clock = Clock()
        self.router = GossipRouter(keypair(), self.clock, Params(**params), random.Random(7))
        self.delivered = []
        self.router.listeners.append(lambda topic, msg, peer: self.delivered.append((topic, msg.data)))
        self.keys = {}
        self.links = {}

    def add_peers(self, count, topics=("t",)):
        added = []
        for _ in range(count):
            kp = keypair()
            link = MemoryLink()
            self.keys[kp.peer_id], self.links[kp.peer_id] = kp, link
            self.router.attach(kp.peer_id, link)
            self.router.handle_rpc(kp.peer_id, gm.RPC(subscriptions=[(True, t) for t in topics]))
            added.append(kp.peer_id)
        return added

    def join(self, count):
        """The router joins "t" with ``count`` peers in it and runs a heartbeat
        (its mesh forms); returns the peers."""
        self.router.subscribe("t")
        peers = self.add_peers(count)
        self.router.heartbeat()
        return peers

    def message(self, peer, data, topic="t", seqno=1):
        msg = gm.sign(self.keys[peer], topic, data, seqno.to_bytes(8, "big"))
        return gm.decode_message(msg.encode())          # as it arrives off the wire

    def send(self, peer, *messages):
        self.router.handle_rpc(peer, gm.RPC(publish=messages))


class MeshTests(unittest.TestCase):
    def test_heartbeat_grafts_d_peers_and_prunes_down_to_d(self):
        net = Net()
        peers = net.join(15)
        mesh = net.router.mesh["t"]
        self.assertEqual(len(mesh), 6)
        self.assertEqual({p for p in peers if net.links[p].grafts() == ["t"]}, mesh)
        for p in peers:                                    # everyone grafts us
            net.router.handle_rpc(p, gm.RPC(graft=["t"]))
        self.assertEqual(len(mesh), 15)
        for link in net.links.values():
            link.take()
        net.router.heartbeat()
        self.assertEqual(len(mesh), 6)
        pruned = [p for p in peers if net.links[p].prunes()]
        self.assertEqual(len(pruned), 9)
        self.assertEqual(net.links[pruned[0]].prunes(), [("t", 60)])
        # a pruned peer that grafts again during its backoff is refused and penalised
        net.links[pruned[0]].take()
        net.router.handle_rpc(pruned[0], gm.RPC(graft=["t"]))
        self.assertNotIn(pruned[0], mesh)
        self.assertEqual(net.links[pruned[0]].prunes(), [("t", 60)])
        self.assertLess(net.router.peers[pruned[0]].score, 0)

    def test_mesh_below_d_lo_is_refilled_and_leaving_peers_are_forgotten(self):
        net = Net()
        peers = net.join(8)
        mesh = net.router.mesh["t"]
        for p in list(mesh)[:3]:
            net.router.remove(p)                           # their connections closed
        self.assertEqual(len(mesh), 3)
        net.router.heartbeat()
        self.assertEqual(len(mesh), 5)                     # all that is left
        gone = next(iter(mesh))
        net.router.handle_rpc(gone, gm.RPC(subscriptions=[(False, "t")]))
        self.assertNotIn(gone, mesh)
        self.assertNotIn(gone, net.router.topics["t"])
        self.assertEqual(len(peers), 8)

    def test_graft_for_a_topic_we_are_not_in_is_pruned_without_penalty(self):
        net = Net()
        [p] = net.add_peers(1, topics=("other",))
        net.router.handle_rpc(p, gm.RPC(graft=["other"]))
        self.assertEqual(net.links[p].prunes(), [("other", 60)])
        self.assertEqual(net.router.peers[p].score, 0)

    def test_subscriptions_are_sent_to_peers_and_bounded(self):
        net = Net(subscribe_all=True, max_topics=2, max_topics_per_peer=3)
        [p] = net.add_peers(1, topics=("a", "b", "c", "d"))
        self.assertEqual(sorted(net.router.mesh), ["a", "b"])       # relayd joins at most 2
        self.assertEqual(sorted(net.router.peers[p].topics), ["a", "b", "c"])
        subs = [s for r in net.links[p].rpcs for s in r.subscriptions]
        self.assertEqual(subs, [(True, "a"), (True, "b")])


class MessageTests(unittest.TestCase):
    def setUp(self):
        self.net = Net()
        self.peers = self.net.join(4)
        for link in self.net.links.values():
            link.take()

    def test_forwarded_once_to_the_mesh_but_not_back(self):
        a, b = self.peers[:2]
        msg = self.net.message(a, b"a: hi")
        self.net.send(a, msg)
        self.net.send(b, msg)                              # the same message via b
        self.assertEqual(self.net.delivered, [("t", b"a: hi")])
        self.assertEqual(self.net.links[a].published(), [])
        for p in self.peers[1:]:
            self.assertEqual([m.data for m in self.net.links[p].published()], [b"a: hi"])
            self.assertTrue(gm.check_signature(self.net.links[p].published()[0]))
        self.assertEqual(self.net.router.counts["duplicates"], 1)

    def test_bad_signatures_are_dropped_penalised_then_graylisted(self):
        a = self.peers[0]
        good = self.net.message(a, b"a: hi")
        forged = gm.decode_message(good.encode().replace(b"a: hi", b"a: yo"))
        self.net.send(a, forged)
        self.assertEqual(self.net.delivered, [])
        self.assertEqual(self.net.router.counts["invalid"], 1)
        self.net.send(a, good)                             # the forgery did not poison the id
        self.assertEqual(self.net.delivered, [("t", b"a: hi")])
        unsigned = gm.decode_message(gm.Message(a.bytes, b"x", b"\0" * 8, "t").encode())
        with capturedLogs() as logged:
            for n in range(8):
                self.net.send(a, unsigned)
        self.assertLess(self.net.router.peers[a].score, -80)
        self.assertEqual([e["peer"] for e in logged if "graylisted" in e["log_format"]], [str(a)])
        self.net.send(a, self.net.message(a, b"later", seqno=2))
        self.assertEqual(self.net.router.counts["graylisted"], 1)
        self.assertEqual(len(self.net.delivered), 1)
        self.net.router.heartbeat()                        # a negative peer leaves the mesh
        self.assertNotIn(a, self.net.router.mesh["t"])
        for _ in range(40):                                # and is forgiven in time
            self.net.router.heartbeat()
        self.net.send(a, self.net.message(a, b"later", seqno=2))
        self.assertEqual(len(self.net.delivered), 2)

    def test_permissive_policy_takes_unsigned_messages(self):
        net = Net(strict_sign=False)
        net.router.subscribe("t")
        [a] = net.add_peers(1)
        net.send(a, gm.decode_message(gm.Message(None, b"anon", None, "t").encode()))
        self.assertEqual(net.delivered, [("t", b"anon")])

    def test_messages_of_topics_we_are_not_in_are_not_delivered(self):
        a = self.peers[0]
        self.net.send(a, self.net.message(a, b"elsewhere", topic="x"))
        self.assertEqual((self.net.delivered, self.net.router.counts["ignored"]), ([], 1))

    def test_publish_signs_and_floods_every_subscriber(self):
        msg_id = self.net.router.publish("t", b"relay: hello")
        for p in self.peers:
            [msg] = self.net.links[p].published()
            self.assertEqual((msg.id, msg.data, msg.topic), (msg_id, b"relay: hello", "t"))
            self.assertTrue(gm.check_signature(gm.decode_message(msg.encode())))
        self.assertEqual(msg_id[:-8], self.net.router.keypair.peer_id.bytes)

    def test_a_peer_that_does_not_read_loses_forwarded_messages_only(self):
        a, b = self.peers[:2]
        self.net.links[b].backlog = 10 ** 9
        self.net.send(a, self.net.message(a, b"m"))
        self.assertEqual(self.net.links[b].published(), [])
        self.assertEqual(self.net.router.counts["dropped"], 1)


class GossipTests(unittest.TestCase):
    def test_ihave_iwant_and_the_cache_windows(self):
        net = Net(D=2, D_lo=1, D_hi=3, D_lazy=6)
        peers = net.join(5)
        mesh = net.router.mesh["t"]
        outside = [p for p in peers if p not in mesh]
        author = next(iter(mesh))
        msg = net.message(author, b"gossip me")
        net.send(author, msg)
        for link in net.links.values():
            link.take()
        net.router.heartbeat()
        for p in outside:
            self.assertEqual([i for r in net.links[p].rpcs for i in r.ihave], [("t", [msg.id])])
        # a peer asks for it; served at most 3 times
        asker = outside[0]
        for _ in range(4):
            net.router.handle_rpc(asker, gm.RPC(iwant=[msg.id]))
        self.assertEqual(len(net.links[asker].published()), 3)
        net.router.heartbeat()
        net.router.heartbeat()                             # gossiped in 3 heartbeats
        net.links[outside[1]].take()
        net.router.heartbeat()
        self.assertEqual(net.links[outside[1]].rpcs, [])
        net.router.heartbeat()                             # 5 windows: gone
        net.router.handle_rpc(outside[1], gm.RPC(iwant=[msg.id]))
        self.assertEqual(net.links[outside[1]].published(), [])

    def test_ihave_of_unseen_ids_is_answered_with_iwant_within_bounds(self):
        net = Net(max_ihave_length=3)
        net.router.subscribe("t")
        [a, b] = net.add_peers(2)
        known = net.message(a, b"known")
        net.send(a, known)
        net.links[b].take()
        net.router.handle_rpc(b, gm.RPC(ihave=[("t", [known.id, b"x1", b"x2", b"x3", b"x4"])]))
        self.assertEqual([r.iwant for r in net.links[b].take()], [[b"x1", b"x2", b"x3"]])
        net.router.handle_rpc(b, gm.RPC(ihave=[("t", [b"x5"])]))      # this heartbeat's quota is used
        self.assertEqual(net.links[b].take(), [])
        net.router.heartbeat()
        net.links[b].take()
        net.router.handle_rpc(b, gm.RPC(ihave=[("elsewhere", [b"x5"])]))
        self.assertEqual(net.links[b].take(), [])


class CacheTests(unittest.TestCase):
    def test_seen_cache_expires_and_is_bounded(self):
        clock = Clock()
        seen = SeenCache(clock, ttl=10, max_entries=3)
        self.assertTrue(seen.add(b"a"))
        self.assertFalse(seen.add(b"a"))
        clock.advance(5)
        seen.add(b"b")
        clock.advance(5)
        seen.expire()
        self.assertNotIn(b"a", seen)
        self.assertIn(b"b", seen)
        for i in range(5):
            seen.add(bytes([i]))
        self.assertEqual(len(seen), 3)

    def test_message_cache_window_bound(self):
        cache = MessageCache(history=2, gossip=1, max_per_window=2)
        msg = gm.Message(b"p", b"d", b"1", "t")
        self.assertTrue(cache.put(b"1", msg))
        self.assertTrue(cache.put(b"2", msg))
        self.assertFalse(cache.put(b"3", msg))
        cache.shift()
        self.assertEqual(cache.gossip_ids("t"), [])
        self.assertIsNotNone(cache.get(b"1"))
        cache.shift()
        self.assertEqual(len(cache), 0)


class CodecAndSettingsTests(unittest.TestCase):
    def test_rpc_round_trip(self):
        rpc = gm.RPC(subscriptions=[(True, "a"), (False, "b")], ihave=[("a", [b"1", b"2"])],
                     iwant=[b"3"], graft=["a"], prune=[("b", 60)])
        back = gm.decode(rpc.encode())
        self.assertEqual((back.subscriptions, back.ihave, back.iwant, back.graft, back.prune),
                         (rpc.subscriptions, rpc.ihave, rpc.iwant, rpc.graft, rpc.prune))
        self.assertRaises(ValueError, gm.decode, b"\x12\x02\x08\x01")    # a message without topic

    def test_a_field_of_another_wire_type_is_malformed(self):
        """A subscription, message or control entry sent as a number, not as
        the nested message it must be: ValueError, which resets the stream."""
        fixed64 = b"\x01" * 8
        for rpc in (b"\x08\x05", b"\x09" + fixed64, b"\x10\x05", b"\x11" + fixed64,
                    b"\x1a\x02\x08\x05", b"\x1a\x09\x11" + fixed64, b"\x1a\x02\x18\x05",
                    b"\x1a\x02\x20\x05"):
            self.assertRaises(ValueError, gm.decode, rpc)

    def test_settings_and_their_errors(self):
        s = config.parse("[gossipsub]\ntopics = libp2p-chat, other\n").gossipsub
        self.assertEqual((s.topics, s.d, s.d_lo, s.d_hi, s.d_lazy), (["libp2p-chat", "other"], 6, 4, 12, 6))
        self.assertTrue(s.strict_signing)
        with self.assertRaises(config.ConfigError) as caught:
            config.parse("[gossipsub]\nheartbeat_interval = often\n")
        self.assertIn("[gossipsub] heartbeat_interval", str(caught.exception))
