"""JSON log lines for twistd's --logger keep the events' structured fields."""
import io
import sys

from twisted.logger import Logger, eventsFromJSONLogFile, formatEvent
from twisted.trial import unittest

from relayd.ops import jsonlog


class JSONLogTests(unittest.TestCase):
    def test_events_round_trip_with_their_fields(self):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        log = Logger(observer=jsonlog.stdout())
        log.info("stats {line}", line="tcp.connections=2", stats={"tcp": {"connections": 2}})
        log.warn("banned {ip} for {seconds}s", ip="192.0.2.1", seconds=600)
        out.seek(0)
        stats, ban = list(eventsFromJSONLogFile(out))
        self.assertEqual(stats["stats"], {"tcp": {"connections": 2}})
        self.assertEqual(formatEvent(stats), "stats tcp.connections=2")
        self.assertEqual((ban["ip"], ban["seconds"], formatEvent(ban)),
                         ("192.0.2.1", 600, "banned 192.0.2.1 for 600s"))
