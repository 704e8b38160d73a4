"""The router's metrics as Prometheus scrapes them."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial import unittest

from relayd.core.dedup import DedupWindow
from relayd.core.history import History
from relayd.core.mailbox import Mailboxes
from relayd.core.metrics import LatencyHistogram
from relayd.core.router import Router
from tests.fakes import FakeSession, MemoryJournal, MemoryOwnership


def scrape(registry):
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


class RouterMetricsTests(unittest.TestCase):
    def test_counters_and_gauges_move_with_messages(self):
        clock = Clock()
        clock.advance(1000)
        registry = CollectorRegistry()
        router = Router("relay1", clock, DedupWindow(clock, 60, 100), Mailboxes(clock, 10, 100),
                        History(10), MemoryOwnership(), retention=3600, registry=registry)
        router.journal = MemoryJournal()
        alice, bob, carol = FakeSession("alice"), FakeSession("bob"), FakeSession("carol")
        for s in (alice, bob, carol):
            router.attach(s)
        router.submit(alice, "*", "to all", nonce="n1")
        router.submit(alice, "*", "to all", nonce="n1")          # a retry: a dedup hit
        router.submit(alice, "dave", "stored")
        m = scrape(registry)
        self.assertEqual(m[("relayd_messages_received_total", (("source", "client"),))], 2)
        self.assertEqual(m[("relayd_messages_received_total", (("source", "federation"),))], 0)
        self.assertEqual(m[("relayd_messages_delivered_total", ())], 2)
        self.assertEqual(m[("relayd_messages_stored_total", ())], 1)
        self.assertEqual(m[("relayd_dedup_hits_total", ())], 1)
        self.assertEqual(m[("relayd_sessions", ())], 3)
        self.assertEqual(m[("relayd_mailbox_messages", ())], 1)
        self.assertEqual(m[("relayd_message_commit_seconds_count", ())], 2)
        self.assertEqual(m[("relayd_message_commit_seconds_bucket", (("le", "+Inf"),))], 2)


class HistogramTests(unittest.TestCase):
    def test_buckets_are_cumulative_and_inclusive(self):
        h = LatencyHistogram()
        for seconds in (0.0001, 0.0002, 0.0005, 2.0):
            h.observe(seconds)
        buckets = dict(h.cumulative())
        self.assertEqual((buckets["0.0001"], buckets["0.00025"], buckets["0.0005"], buckets["1.0"],
                          buckets["+Inf"]), (1, 2, 3, 3, 4))
        self.assertAlmostEqual(h.sum, 2.0008)
