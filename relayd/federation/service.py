"""The federation service: the inbound listener plus one dialer per peer.

Each peer gets a ``ClientService`` whose retry policy (exponential backoff
with jitter) counts a link that closed before it authenticated as a failed
attempt, so a peer that answers but fails the handshake is retried ever
more slowly.
On reload (SIGHUP or the admin console) peers are added and removed
without touching client connections.

On a cluster node (``standby``) the listener and the dialers run only
while the node leads the cluster's federation (``lead``, ``stand_by``; see
``relayd.cluster.federation``).
"""
import random

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relayd.federation import keys, peers as peer_list
from relayd.federation.hub import Hub
from relayd.federation.index import Index, JournalTee
from relayd.federation.link import LinkFactory
from relayd.federation.metrics import FederationMetrics
from relayd.listeners import stream_service


class HandshakeBackoff:
    """One dialer's retry policy. ``ClientService`` counts a connection as
    made once TCP (and TLS) are up, and its attempts start again from 1;
    here each link in a row that closed before it authenticated counts as
    a failed attempt too. (Its ``prepareConnection``, which could wait for
    the handshake, raises ``NoTransition`` in Twisted 26.10 when such a
    connection then drops.)"""

    def __init__(self, initial, maximum):
        self.unauthenticated = 0        # links in a row that closed before authenticating
        self._policy = backoffPolicy(initial, maximum, 2.0, random.random)

    def __call__(self, attempt):
        """The delay before the next connection attempt; ``attempt`` counts
        from the last connection, which is one of ``unauthenticated``."""
        return self._policy(attempt + max(self.unauthenticated - 1, 0))

    def watch(self, link):
        """Count how the handshake of ``link``, a new outbound link, ends."""
        link.ready.addCallbacks(self._authenticated, self._refused)

    def _authenticated(self, link):
        self.unauthenticated = 0

    def _refused(self, failure):
        self.unauthenticated += 1


class FederationService(MultiService):
    log = Logger()

    def __init__(self, daemon, hub, standby=False):
        super().__init__()
        self.setName("federation")
        self.daemon = daemon
        self.hub = hub
        self.settings = daemon.settings
        self.dialers = {}               # name -> ClientService
        self._loaded = False
        self.standby = standby          # links only while ``leading`` (a cluster node)
        self.leading = not standby
        self.standby_problem = None     # why a standby node cannot lead, for /health
        self.listener = stream_service(daemon, hub.settings.listen, LinkFactory(hub))
        if self.leading:
            self.listener.setServiceParent(self)
        self._repair = LoopingCall(hub.repair)
        self._repair.clock = daemon.reactor

    def privilegedStartService(self):
        """Read the peers before anything listens: a bad peer list stops the daemon."""
        try:
            self.hub.peers = peer_list.load(self.settings)
        except peer_list.PeerError as e:
            raise SystemExit(f"federation: {e}") from None
        self._loaded = True
        super().privilegedStartService()

    def startService(self):
        if not self._loaded:
            self.hub.peers = peer_list.load(self.settings)
            self._loaded = True
        self.hub.identity = self.daemon.identity
        d = self.daemon.file_pool.run(keys.write_public, self.settings.relay.data_dir,
                                      self.hub.identity)
        d.addErrback(lambda f: self.log.failure("federation: could not write identity.pub", f))
        super().startService()
        count = self.hub.sequence_leftovers()
        if count:
            self.log.info("federation: sequenced {count} journal items that had no seq", count=count)
        self.hub.checkpoint()
        if self.leading:
            self._link_up()

    def _link_up(self):
        if self.hub.settings.repair_interval > 0:
            self._repair.start(self.hub.settings.repair_interval, now=False)
        for peer in self.hub.peers.values():
            if peer.name not in self.dialers:
                self._dial(peer)
        self.log.info("federation listening on {listen}; {count} peers: {names}",
                      listen=self.hub.settings.listen, count=len(self.hub.peers),
                      names=", ".join(sorted(self.hub.peers)) or "none")

    def stopService(self):
        self._loaded = False
        if self._repair.running:
            self._repair.stop()
        return super().stopService()

    def lead(self):
        """Listen and dial every peer (this node now leads its cluster's federation)."""
        if self.leading:
            return
        self.leading = True
        self.listener.setServiceParent(self)
        if self.running:
            self._link_up()

    def stand_by(self):
        """Close every link and stop listening; fires once they are down."""
        if not self.leading:
            return None
        self.leading = False
        if self._repair.running:
            self._repair.stop()
        stopped = [self.listener.disownServiceParent()]
        for name in list(self.dialers):
            stopped.append(self.dialers.pop(name).disownServiceParent())
        self.log.info("federation: links closed (standing by)")
        return defer.DeferredList([d for d in stopped if d is not None], consumeErrors=True)

    def _dial(self, peer):
        s = self.hub.settings
        endpoint = peer_list.client_endpoint(self.daemon.reactor, peer.endpoint, s.tor_socks)
        policy = HandshakeBackoff(s.backoff_initial, s.backoff_max)
        dialer = ClientService(endpoint, LinkFactory(self.hub, peer.name, policy.watch),
                               retryPolicy=policy, clock=self.daemon.reactor)
        dialer.setName("peer:" + peer.name)
        dialer.setServiceParent(self)
        self.dialers[peer.name] = dialer

    def _hang_up(self, name):
        dialer = self.dialers.pop(name, None)
        if dialer is not None:
            dialer.disownServiceParent()
        self.hub.drop_peer(name)

    def reload(self, settings):
        """Apply a new peer list; keeps the old one if the new one is wrong."""
        if settings.get("federation") is None:
            self.log.warn("federation: removing [federation] takes effect at the next restart")
            return
        try:
            new = peer_list.load(settings)
        except peer_list.PeerError as e:
            self.log.error("federation: reload refused, peers unchanged: {error}", error=str(e))
            return
        old, self.settings = self.hub.peers, settings
        self.hub.peers, self.hub.settings = new, settings.federation
        for name in sorted(set(old) - set(new)):
            self._hang_up(name)
            self.log.info("federation: peer {peer} removed", peer=name)
        for name in sorted(set(new)):
            if name in old and old[name] == new[name]:
                continue
            if name in old:
                self._hang_up(name)
            if self.running and self.leading:
                self._dial(new[name])
            self.log.info("federation: peer {peer} {how}", peer=name,
                          how="changed" if name in old else "added")

    def peers(self):
        return self.hub.peer_rows()

    def stats(self):
        rows = self.peers()
        return {"listen": self.hub.settings.listen, "leading": self.leading, "peers": len(rows),
                "links_up": sum(1 for r in rows if r["state"] == "up"),
                "cursors": {o: [c.low, c.high()] for o, c in self.hub.index.cursors.items()},
                "hop_limited": self.hub.hop_limited,
                "by_peer": {r["peer"]: {k: r[k] for k in ("state", "messages_in", "messages_out",
                                                        "dedup_hits", "lag")} for r in rows}}

    def health(self):
        if not self.leading:
            return self.standby_problem     # else another node of the cluster holds the links
        down = [r["peer"] for r in self.peers() if r["state"] != "up"]
        if down and len(down) == len(self.hub.peers):
            return "no federation link is up (" + ", ".join(down) + ")"
        return None


def build_federation(daemon, clustered=False):
    """Wire federation into a daemon built by ``relayd.daemon.build_core``;
    on a cluster node (``clustered``) its links wait for the node to lead."""
    s = daemon.settings
    router, journal = daemon.router, daemon.journal
    hub_class, index_class = Hub, Index
    if clustered:
        from relayd.cluster.federation import ClusterHub as hub_class, ClusterIndex as index_class
    index = index_class(s.relay.id)
    journal.consumer = JournalTee(router, index)
    hub = hub_class(s.relay.id, router, journal, index, daemon.reactor, daemon.file_pool,
                    FederationMetrics(daemon.registry), s.federation)
    router.subscribe(hub)
    router.sequencer = hub
    journal.add_state("federation", hub.durable_snapshot, index.load_snapshot)
    service = FederationService(daemon, hub, standby=clustered)
    daemon.on_reload(service.reload)
    service.setServiceParent(daemon)
    daemon.federation = service
    return service
