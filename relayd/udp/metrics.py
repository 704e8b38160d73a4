"""Prometheus view of the rendezvous counters, read at scrape time.

The protocol counts in a plain ``Counter`` (cheap on the hot path); this
collector turns it into ``relayd_udp_*`` metrics when someone asks.
"""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PLAIN = {
    "received": "datagrams received",
    "sent": "datagrams sent",
    "relayed": "relayed_packet datagrams forwarded",
    "relayed_bytes": "bytes of relayed_packet datagrams forwarded",
    "registered": "successful register requests",
    "connects": "connect requests answered (hole punching)",
    "stale": "peers removed as stale",
    "stun_success": "STUN Binding success responses",
    "stun_error": "STUN error responses",
    "announcements_suppressed": "peer_joined/peer_left broadcasts skipped (table above announce_limit)",
}
LABELLED = {"dropped_": ("dropped", "datagrams dropped without a reply", "reason"),
            "error_": ("errors_sent", "error packets sent", "code")}


class UDPCollector:
    def __init__(self, protocol):
        self.protocol = protocol

    def collect(self):
        counts = self.protocol.counts
        for key, doc in PLAIN.items():
            yield CounterMetricFamily(f"relayd_udp_{key}", doc, value=counts[key])
        for prefix, (name, doc, label) in LABELLED.items():
            family = CounterMetricFamily(f"relayd_udp_{name}", doc, labels=[label])
            for key, value in sorted(counts.items()):
                if key.startswith(prefix):
                    family.add_metric([key[len(prefix):]], value)
            yield family
        yield GaugeMetricFamily("relayd_udp_peers", "registered peers", value=len(self.protocol.table))
        yield GaugeMetricFamily("relayd_udp_proven_addresses",
                                "addresses that proved they receive (cookie or key), not budgeted",
                                value=len(self.protocol.proven))
