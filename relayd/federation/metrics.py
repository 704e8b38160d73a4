"""Per-peer federation metrics (Prometheus) and the counters behind ``peers()``."""
from prometheus_client import Counter, Gauge


class PeerStats:
    """What the admin console shows for one peer."""

    __slots__ = ("links", "since", "received", "sent", "dedup_hits", "caught_up", "lag",
                 "connects", "last_error", "series")

    def __init__(self):
        self.links = 0
        self.since = None
        self.received = {"messages": 0, "receipts": 0}
        self.sent = {"messages": 0, "receipts": 0}
        self.dedup_hits = self.caught_up = self.connects = 0
        self.lag = None
        self.last_error = None
        self.series = {}        # (metric, labels) -> the peer's labelled child, see Hub.series


class FederationMetrics:
    def __init__(self, registry):
        kw = {"registry": registry}
        self.links = Gauge("relayd_federation_links", "Authenticated links up, per peer", ["peer"], **kw)
        self.items_in = Counter("relayd_federation_items_in_total", "Items received from a peer",
                                ["peer", "kind"], **kw)
        self.items_out = Counter("relayd_federation_items_out_total", "Items sent to a peer",
                                 ["peer", "kind"], **kw)
        self.items_behind = Counter("relayd_federation_items_behind_total",
                                    "Items not queued for a peer whose link buffer was full "
                                    "(it gets them by catch-up)", ["peer", "kind"], **kw)
        self.dedup = Counter("relayd_federation_dedup_hits_total", "Items from a peer already held",
                             ["peer"], **kw)
        self.caught_up = Counter("relayd_federation_catchup_items_total",
                                 "Items sent to a peer by catch-up", ["peer"], **kw)
        self.lag = Gauge("relayd_federation_lag_seconds",
                         "Age of the last message received from a peer", ["peer"], **kw)
        self.connects = Counter("relayd_federation_link_ups_total", "Links that authenticated", ["peer"], **kw)
        self.refused = Counter("relayd_federation_handshake_failures_total",
                               "Links refused during the handshake", **kw)
        self.hop_limited = Counter("relayd_federation_hop_limited_total",
                                   "Messages not forwarded because of the hop limit", **kw)
        self.bad_frames = Counter("relayd_federation_bad_frames",
                                  "Malformed frames from a peer, answered with an error", ["peer"], **kw)

    def forget(self, peer):
        """Drop the series of a peer that is no longer configured."""
        for metric in (self.links, self.dedup, self.caught_up, self.lag, self.connects,
                       self.bad_frames):
            metric.remove(peer)
        for metric in (self.items_in, self.items_out, self.items_behind):
            for kind in ("messages", "receipts"):
                metric.remove(peer, kind)


def peer_rows(peers, stats, now):
    """One dict per configured peer, or removed one with a link still up, for
    ``peers()``: ``peers`` name -> Peer, ``stats`` name -> PeerStats."""
    rows = []
    for name in sorted(set(peers) | {name for name, s in stats.items() if s.links}):
        s = stats.get(name) or PeerStats()
        peer = peers.get(name)
        rows.append({
            "peer": name, "endpoint": peer.endpoint if peer else None,
            "fingerprint": peer.fingerprint if peer else None,
            "state": "up" if s.links else "down", "links": s.links,
            "up_for": None if s.since is None else round(now - s.since, 1),
            "messages_in": s.received["messages"], "messages_out": s.sent["messages"],
            "receipts_in": s.received["receipts"], "receipts_out": s.sent["receipts"],
            "dedup_hits": s.dedup_hits, "caught_up": s.caught_up,
            "lag": None if s.lag is None else round(s.lag, 3),
            "connects": s.connects, "last_error": s.last_error})
    return rows
