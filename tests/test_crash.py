"""kill -9 of the real daemon at random moments under load: no acked message is lost.

Recipients online (JSON lines with acks, and a seed-000 client that cannot
ack) and offline; every message a sender got an ack for must reach its
recipient, across at least five kills (see bench/crashload.py).
"""
from twisted.trial import unittest

from bench.crashload import CrashLoad
from tests.daemon import Relayd, free_port, relay_ini

CONFIG = relay_ini("""
    [ratelimit]
    messages = 1000000
    per_seconds = 1
    [mailbox]
    max_per_peer = 1000000
""")
KILLS = 5


class KillTests(unittest.TestCase):
    timeout = 240

    def test_no_acked_message_is_lost_across_kills(self):
        port = free_port()
        relay = Relayd(self, CONFIG, tcp=port)
        load = CrashLoad(seed=None)
        for _ in range(KILLS):
            relay.start(wait_tcp=[port])
            load.round(port, relay.kill, run_for=load.random.uniform(0.5, 1.5))
        relay.start(wait_tcp=[port])
        stopped = load.collect(port)
        for kind in (load.readers, load.legacy, load.offline):
            self.assertGreater(load.acked_to(kind), 100, f"too little load to {kind}")
        lost = load.lost()
        self.assertEqual(len(lost), 0, f"{len(lost)} of {len(load.acked)} acked messages lost "
                                       f"(reading stored mail: {stopped}), "
                                       f"e.g. {sorted(lost.items())[:3]}")
