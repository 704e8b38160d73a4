"""The GossipSub <-> room bridge with a GossipSub router on in-memory links
and a stand-in for the core router."""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from relayd.bridge.gossipsub import GossipRoomBridge
from relayd.core.interfaces import DurableEvent
from relayd.libp2p.gossipsub import messages as gm
from relayd.libp2p.peerid import PeerId

from tests.test_gossipsub import Net


class FakeRouter:
    """The two router calls the bridge makes."""

    def __init__(self):
        self.injected = []
        self.subscribers = []

    def accept_remote(self, entry, source):
        self.injected.append(entry)
        return defer.succeed(True)

    def subscribe(self, subscriber):
        self.subscribers.append(subscriber)


class BridgeTests(unittest.TestCase):
    def setUp(self):
        self.net = Net()
        self.net.router.subscribe("libp2p-chat")
        self.net.router.subscribe("other")
        [self.peer] = self.net.add_peers(1, topics=("libp2p-chat", "other"))
        self.router = FakeRouter()
        self.bridge = self.make_bridge(self.router, "relay1", Clock())

    def make_bridge(self, router, relay_id, clock, federated=True):
        bridge = GossipRoomBridge(router, ["libp2p-chat"], relay_id, clock, federated)
        bridge.attach(self.net.router)
        return bridge

    def test_a_gossip_message_becomes_a_room_message_from_its_signer(self):
        other = FakeRouter()
        clock = Clock()
        clock.advance(1000)
        self.make_bridge(other, "relay2", clock)       # a second relay bridging the topic
        text = f"{self.peer}: hello".encode()
        self.net.send(self.peer, self.net.message(self.peer, text, topic="libp2p-chat"))
        self.net.send(self.peer, self.net.message(self.peer, b"not a chat line", "libp2p-chat", 2))
        self.net.send(self.peer, self.net.message(self.peer, b"elsewhere", topic="other", seqno=3))
        first, second = self.router.injected
        self.assertEqual({k: first[k] for k in ("from", "to", "body", "room", "via", "seen_by")},
                         {"from": str(self.peer), "to": "#libp2p-chat", "body": "hello",
                          "room": "libp2p-chat", "via": "gossipsub", "seen_by": ["relay1"]})
        self.assertEqual(second["body"], "not a chat line")
        # the other relay made the same message id, so federation keeps one of them
        self.assertEqual([e["msg_id"] for e in other.injected], [first["msg_id"], second["msg_id"]])

    def test_messages_that_are_not_text_or_too_long_are_refused(self):
        self.net.send(self.peer, self.net.message(self.peer, b"\xff\xfe", topic="libp2p-chat"))
        self.net.send(self.peer, self.net.message(self.peer, b"x" * 70000, "libp2p-chat", 2))
        self.assertEqual((self.router.injected, self.bridge.counts["refused"]), ([], 2))

    def publish(self, entry, source=None):
        for link in self.net.links.values():
            link.take()
        self.bridge.durable(DurableEvent(entry, b"", "relay1", source))
        return [m for m in self.net.links[self.peer].published()]

    def test_room_messages_are_published_once_signed_by_the_relay(self):
        entry = {"from": "alice", "to": "#libp2p-chat", "body": "hi", "room": "libp2p-chat",
                 "msg_id": "a" * 64}
        [msg] = self.publish(entry)
        self.assertEqual((msg.topic, msg.data, PeerId(msg.sender)),
                         ("libp2p-chat", b"alice: hi", self.net.router.keypair.peer_id))
        self.assertTrue(gm.check_signature(gm.decode_message(msg.encode())))
        self.assertEqual(self.publish(dict(entry, via="gossipsub")), [])      # no echo
        self.assertEqual(self.publish(dict(entry, room="other")), [])         # not bridged
        self.assertEqual(len(self.publish(entry, source="a federation link")), 1)
        self.bridge.federated = False
        self.assertEqual(self.publish(entry, source="a federation link"), [])
        self.assertEqual(self.bridge.stats(), {"in": 0, "out": 2, "refused": 0,
                                               "rooms": ["libp2p-chat"]})

    def test_a_lone_surrogate_in_a_room_message_is_published_as_a_replacement_character(self):
        """relayd's clients may send one as a JSON escape; UTF-8 cannot carry it."""
        entry = {"from": "alice", "to": "#libp2p-chat", "body": "a\udfff\ud800b",
                 "room": "libp2p-chat", "msg_id": "a" * 64}
        [msg] = self.publish(entry)
        self.assertEqual(msg.data.decode("utf-8"), "alice: a\ufffd\ufffdb")
