"""Wiring of the libp2p hub services on top of ``[libp2p]``: ``[kad]`` (the
DHT server) and ``[gossipsub]`` (with its bridge to relayd rooms)."""
from relayd.config import ConfigError


def build_hub(daemon, libp2p):
    settings = daemon.settings
    for section in ("kad", "gossipsub"):
        if settings.enabled(section) and libp2p is None:
            raise ConfigError(f"{settings.source}: [{section}] needs a [libp2p] section "
                              f"(it serves on the libp2p listener)")
    if settings.enabled("kad"):
        from relayd.libp2p.kad.service import KadService
        KadService(daemon, libp2p, settings.kad, daemon.reactor).setServiceParent(daemon)
    if settings.enabled("gossipsub"):
        from relayd.libp2p.gossipsub.service import GossipSubService
        g = settings.gossipsub
        if not g.d_lo <= g.d <= g.d_hi:
            raise ConfigError(f"{settings.source}: [gossipsub] d: must lie between d_lo and d_hi")
        GossipSubService(daemon, libp2p, g, daemon.reactor).setServiceParent(daemon)
