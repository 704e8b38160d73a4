"""The router's Prometheus metrics, read from plain counters at scrape time.

The message path then pays an integer increment per figure instead of a
locked update of a prometheus_client metric (which cost about a tenth of
the relay's CPU at saturation).
"""
import bisect

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import INF, floatToGoString

LATENCY_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1.0)


class LatencyHistogram:
    """Counts per bucket (``le`` inclusive, as Prometheus means it) and a sum."""

    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds):
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self):
        """``[(le, count of observations <= le)]`` ending with ``+Inf``."""
        out, total = [], 0
        for bound, count in zip(LATENCY_BUCKETS + (INF,), self.counts):
            total += count
            out.append((floatToGoString(bound), total))
        return out


class RouterCollector:
    """Exposes the router's counters and gauges (its pipeline's and its delivery's)."""

    def __init__(self, pipeline, delivery):
        self.pipeline = pipeline
        self.delivery = delivery

    def collect(self):
        r, d = self.pipeline, self.delivery
        received = CounterMetricFamily("relayd_messages_received_total", "Messages accepted",
                                       labels=["source"])
        for source, count in r.accepted.items():
            received.add_metric([source], count)
        yield received
        for name, doc, value in (
                ("relayd_messages_delivered_total", "Message copies written to clients", d.delivered),
                ("relayd_messages_stored_total", "Messages kept for offline peers", d.stored),
                ("relayd_dedup_hits_total", "Messages dropped as already seen", r.dedup.hits),
                ("relayd_journal_failures_total", "Messages refused because the journal failed",
                 r.journal_failures)):
            yield CounterMetricFamily(name, doc, value=value)
        yield HistogramMetricFamily(
            "relayd_message_commit_seconds", "From acceptance to durable and delivered",
            buckets=r.latency.cumulative(), sum_value=r.latency.sum)
        for name, doc, value in (
                ("relayd_sessions", "Identified client sessions", len(d.sessions)),
                ("relayd_rooms", "Rooms with members", len(d.members)),
                ("relayd_mailbox_messages", "Messages waiting for offline peers", d.mailboxes.total())):
            yield GaugeMetricFamily(name, doc, value=value)
