"""Smoke test of bench.libp2p_hub: tiny counts against the real daemon;
no timing is asserted (performance is measured by ``make bench``)."""
from twisted.trial import unittest

from tests.test_bench import rows, run_bench


class HubBenchTests(unittest.TestCase):
    def test_gossipsub_and_dht_figures(self):
        found = run_bench("bench.libp2p_hub", "--subscribers", "3", "--messages", "20",
                          "--seconds", "0.5")
        [gossip] = rows(found, hub="relayd-hub")[:1]
        self.assertEqual((gossip["delivered"], gossip["expected"]), ("60", "60"))
        self.assertGreater(float(gossip["msgs_per_s"]), 0)
        float(gossip["kib_per_subscriber"])
        [kad] = [f for bench, f in found if bench == "libp2p_kad"]
        self.assertGreater(float(kad["lookups_per_s"]), 0)
