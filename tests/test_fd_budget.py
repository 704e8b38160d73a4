"""The fd budget: a flood of idle connections on one listener cannot take the
descriptors the other listeners and /health need."""
import socket
import time

from twisted.internet.task import Clock
from twisted.trial import unittest

from prometheus_client import CollectorRegistry

from relayd.fdbudget import FdBudget
from tests.daemon import Relayd, free_port, relay_ini
from tests.test_ops_support import http_json, http_get, metric_value

LIMIT = 256         # the open-file limit the daemon runs with


class ShareTests(unittest.TestCase):
    def test_each_listener_keeps_its_share(self):
        budget = FdBudget(reserve=64, clock=Clock(), registry=CollectorRegistry(), limit=256)
        for name in ("tcp", "http", "admin"):
            budget.register(name)
        budget.startService()
        self.assertEqual((budget.total, budget.share()), (192, 32))
        taken = sum(budget.admit("tcp") for _ in range(1000))
        self.assertEqual(taken, 192 - 2 * 32)              # the others' shares stay free
        self.assertEqual(sum(budget.admit("http") for _ in range(100)), 32)
        self.assertEqual(sum(budget.admit("admin") for _ in range(100)), 32)
        budget.release("tcp")
        self.assertTrue(budget.admit("http"))              # a freed descriptor is anyone's
        self.assertEqual(budget.stats()["open"], {"tcp": 127, "http": 33, "admin": 32})


class LimitedRelayd(Relayd):
    def command(self):
        return ["sh", "-c", f'ulimit -n {LIMIT} && exec "$0" "$@"'] + super().command()


class FloodTests(unittest.TestCase):
    timeout = 120

    def test_a_flooded_listener_leaves_health_and_the_console_reachable(self):
        ports = {"tcp": free_port(), "http": free_port(), "admin": free_port()}
        relay = LimitedRelayd(self, relay_ini("""
            [http]
            listen = tcp:{http}:interface=127.0.0.1
            [admin]
            listen = tcp:{admin}:interface=127.0.0.1
            authorized_keys = {workdir}/keys
        """), **ports)
        open(relay.workdir + "/keys", "w").close()
        relay.start(wait_tcp=list(ports.values()))
        flood = []
        self.addCleanup(lambda: [s.close() for s in flood])
        for n in range(2 * LIMIT):          # from several addresses: past [tcp]'s per-IP cap
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + n // 90}", 0))
            sock.connect(("127.0.0.1", ports["tcp"]))
            flood.append(sock)
        time.sleep(1)
        status, body = http_json(ports["http"], "/health")
        self.assertEqual(status, 200, body)
        with socket.create_connection(("127.0.0.1", ports["admin"]), timeout=10) as ssh:
            self.assertTrue(ssh.recv(64).startswith(b"SSH-2.0-"))
        _, metrics, _ = http_get(ports["http"], "/metrics")
        refused = metric_value(metrics.decode(), "relayd_fd_budget_refused_total", listener="tcp")
        self.assertGreater(refused, LIMIT)
        log = relay.log()
        self.assertIn("fd budget: 192 descriptors for connections", log)
        self.assertLessEqual(log.count("fd budget: refused a connection"), 20)
        self.assertNotIn("Too many open files", log)
