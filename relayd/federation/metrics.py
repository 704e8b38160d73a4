"""Per-peer federation metrics (Prometheus) and the counters behind ``peers()``.

What a peer's ``PeerStats`` counts (links, items in and out, dedup hits,
catch-up, lag, connects) is exported from those plain counters at scrape
time, so an item costs an integer increment, not a locked update of a
prometheus_client metric as well.
"""
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

KINDS = ("messages", "receipts")


class PeerStats:
    """What the admin console and /metrics show for one peer."""

    __slots__ = ("links", "since", "received", "sent", "dedup_hits", "caught_up", "lag",
                 "connects", "last_error")

    def __init__(self):
        self.links = 0
        self.since = None
        self.received = dict.fromkeys(KINDS, 0)
        self.sent = dict.fromkeys(KINDS, 0)
        self.dedup_hits = self.caught_up = self.connects = 0
        self.lag = None
        self.last_error = None


class FederationMetrics:
    """The hub's metrics: ``stats`` (peer name -> PeerStats, kept by the
    hub) read at scrape time, and counters for what no PeerStats counts."""

    def __init__(self, registry):
        kw = {"registry": registry}
        self.stats = {}
        self.items_behind = Counter("relayd_federation_items_behind_total",
                                    "Items not queued for a peer whose link buffer was full "
                                    "(it gets them by catch-up)", ["peer", "kind"], **kw)
        self.refused = Counter("relayd_federation_handshake_failures_total",
                               "Links refused during the handshake", **kw)
        self.hop_limited = Counter("relayd_federation_hop_limited_total",
                                   "Messages not forwarded because of the hop limit", **kw)
        self.bad_frames = Counter("relayd_federation_bad_frames",
                                  "Malformed frames from a peer, answered with an error", ["peer"], **kw)
        registry.register(PeerCollector(self.stats))

    def forget(self, peer):
        """Drop the series of a peer that is no longer configured."""
        self.stats.pop(peer, None)
        self.bad_frames.remove(peer)
        for kind in KINDS:
            self.items_behind.remove(peer, kind)


class PeerCollector:
    """The per-peer families, from ``stats`` (name -> PeerStats)."""

    def __init__(self, stats):
        self.stats = stats

    def collect(self):
        stats = sorted(self.stats.items())
        links = GaugeMetricFamily("relayd_federation_links", "Authenticated links up, per peer",
                                  labels=["peer"])
        items_in = CounterMetricFamily("relayd_federation_items_in_total",
                                       "Items received from a peer", labels=["peer", "kind"])
        items_out = CounterMetricFamily("relayd_federation_items_out_total",
                                        "Items sent to a peer", labels=["peer", "kind"])
        dedup = CounterMetricFamily("relayd_federation_dedup_hits_total",
                                    "Items from a peer already held", labels=["peer"])
        caught_up = CounterMetricFamily("relayd_federation_catchup_items_total",
                                        "Items sent to a peer by catch-up", labels=["peer"])
        lag = GaugeMetricFamily("relayd_federation_lag_seconds",
                                "Age of the last message received from a peer", labels=["peer"])
        connects = CounterMetricFamily("relayd_federation_link_ups_total",
                                       "Links that authenticated", labels=["peer"])
        for name, s in stats:
            links.add_metric([name], s.links)
            for kind in KINDS:
                items_in.add_metric([name, kind], s.received[kind])
                items_out.add_metric([name, kind], s.sent[kind])
            dedup.add_metric([name], s.dedup_hits)
            caught_up.add_metric([name], s.caught_up)
            if s.lag is not None:
                lag.add_metric([name], s.lag)
            connects.add_metric([name], s.connects)
        return [links, items_in, items_out, dedup, caught_up, lag, connects]


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
