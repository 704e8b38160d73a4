"""Wiring of the libp2p hub services on top of ``[libp2p]``: ``[kad]`` (the
DHT server) and ``[gossipsub]`` (with its bridge to relayd rooms)."""
from twisted.logger import Logger

from relayd.bridge.gossipsub import GossipRoomBridge
from relayd.config import ConfigError
from relayd.core.message import valid_room
from relayd.libp2p.gossipsub.service import GossipSubService
from relayd.libp2p.kad.service import KadService
from relayd.libp2p.peerbook import PeerBook

log = Logger(namespace="relayd.libp2p")


def build_hub(daemon, libp2p):
    settings = daemon.settings
    daemon.on_reload(lambda new: _reloaded(settings, new))
    for section in ("kad", "gossipsub"):
        if settings.enabled(section) and libp2p is None:
            raise ConfigError(f"{settings.source}: [{section}] needs a [libp2p] section "
                              f"(it serves on the libp2p listener)")
    if not (settings.enabled("kad") or settings.enabled("gossipsub")):
        return
    book = PeerBook()
    libp2p.add_observer(book)
    if settings.enabled("kad"):
        KadService(daemon, libp2p, book, settings.kad, daemon.reactor).setServiceParent(daemon)
    if settings.enabled("gossipsub"):
        g = settings.gossipsub
        if not g.d_lo <= g.d <= g.d_hi:
            raise ConfigError(f"{settings.source}: [gossipsub] d: must lie between d_lo and d_hi")
        for room in g.bridge:
            reason = valid_room(room)
            if reason:
                raise ConfigError(f"{settings.source}: [gossipsub] bridge: {room!r}: {reason}")
        bridge = None
        if g.bridge:
            bridge = GossipRoomBridge(daemon.router, g.bridge, settings.relay.id,
                                      daemon.reactor, g.bridge_federated)
        GossipSubService(daemon, libp2p, book, g, daemon.reactor, bridge).setServiceParent(daemon)


def _reloaded(old, new):
    for section in ("kad", "gossipsub"):
        if old.get(section) != new.get(section):
            log.warn("[{section}] changed: takes effect at the next start", section=section)
