"""``[gossipsub]``: a GossipSub v1.1 router on the ``[libp2p]`` listener.

relayd subscribes to ``topics`` and ``bridge`` (and, with ``subscribe_all``,
to every topic its peers use, up to ``max_topics``), so that peers that
connect only to relayd get each other's messages.
"""
from prometheus_client import Gauge
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.logger import Logger

from relayd.libp2p.gossipsub.router import GossipRouter, Params
from relayd.libp2p.hub_metrics import GossipCollector
from relayd.libp2p.gossipsub.streams import PROTOCOLS, PubSub


def params_from(settings):
    return Params(
        D=settings.d, D_lo=settings.d_lo, D_hi=settings.d_hi, D_lazy=settings.d_lazy,
        heartbeat_interval=settings.heartbeat_interval, seen_ttl=settings.seen_ttl,
        max_message_size=settings.max_message_size, max_topics=settings.max_topics,
        max_topics_per_peer=settings.max_topics_per_peer,
        max_peers_per_topic=settings.max_peers_per_topic, max_queued=settings.max_queued,
        strict_sign=settings.strict_signing, subscribe_all=settings.subscribe_all)


class GossipSubService(MultiService):
    log = Logger(namespace="relayd.gossipsub")

    def __init__(self, daemon, libp2p, book, settings, reactor, bridge=None):
        super().__init__()
        self.setName("gossipsub")
        self.libp2p = libp2p
        self.settings = settings
        self.reactor = reactor
        self.router = self.pubsub = None
        self.bridge = bridge            # a GossipRoomBridge, attached to the router at start
        for protocol in PROTOCOLS:
            libp2p.add_protocol(protocol, lambda conn: self.pubsub.handler(conn))
        self.book = book                # identify answers of connected peers
        heartbeat = TimerService(settings.heartbeat_interval, self._heartbeat)
        heartbeat.clock = reactor
        heartbeat.setServiceParent(self)
        for name, doc, read in (
                ("relayd_gossipsub_peers", "Peers speaking GossipSub with relayd",
                 lambda: len(self.router.peers) if self.router else 0),
                ("relayd_gossipsub_mesh_peers", "Mesh links over all of relayd's topics",
                 lambda: sum(map(len, self.router.mesh.values())) if self.router else 0)):
            Gauge(name, doc, registry=daemon.registry).set_function(read)
        daemon.registry.register(GossipCollector(self))

    def startService(self):
        if self.router is None:
            self.router = GossipRouter(self.libp2p.keypair, self.reactor, params_from(self.settings))
            self.pubsub = PubSub(self.router)
            self.book.listeners.append(self.pubsub)
            for topic in self.settings.topics + self.settings.bridge:
                self.router.subscribe(topic)
            if self.bridge is not None:
                self.bridge.attach(self.router)
        super().startService()
        self.log.info("gossipsub router on {protocols}, subscribed to {topics}",
                      protocols=" ".join(PROTOCOLS), topics=" ".join(self.router.mesh) or "nothing")

    def _heartbeat(self):
        if self.router is not None:
            self.router.heartbeat()

    def stats(self):
        out = {} if self.router is None else self.router.stats()
        if self.bridge is not None:
            out["bridge"] = self.bridge.stats()
        return out
