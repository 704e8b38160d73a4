"""The monitoring site's pages, the health rules, the bearer token and the
periodic stats log, without sockets."""
import json

from prometheus_client import CollectorRegistry, Counter
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial import unittest
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from relayd import config
from relayd.ops.http import MonitorService, Root, health
from relayd.ops.statslog import StatsLogger, flatten
from tests.test_ops_support import metric_value


class Part(Service):
    def __init__(self, name, reason=None):
        self.setName(name)
        self.reason = reason

    def health(self):
        return self.reason


class FakeDaemon(MultiService):
    def __init__(self):
        super().__init__()
        self.registry = CollectorRegistry()
        self.reactor = Clock()
        self.tls = None

    def uptime(self):
        return 7.0

    def stats(self):
        return {"relay": "relay1", "tcp": {"connections": 1}, "ok": True}


def get(root, path, token=None):
    request = DummyRequest([part.encode() for part in path.strip("/").split("/")])
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", token)
    body = getChildForRequest(root, request).render(request)
    return request.responseCode or 200, body, request


class HealthTests(unittest.TestCase):
    def setUp(self):
        self.daemon = FakeDaemon()
        self.tcp = Part("tcp")
        self.tcp.setServiceParent(self.daemon)
        Service().setServiceParent(self.daemon)  # unnamed helpers do not count
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.root = Root(self.daemon)

    def test_ok_when_every_named_service_runs_and_is_healthy(self):
        code, body, request = get(self.root, "/health")
        self.assertEqual(code, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(json.loads(body),
                         {"status": "ok", "services": ["tcp"], "uptime": 7.0})

    def test_503_names_the_reasons(self):
        self.tcp.reason = "journal is 9s behind"
        stopped = Part("udp")
        stopped.setServiceParent(self.daemon)
        stopped.stopService()
        code, body, _ = get(self.root, "/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["problems"],
                         {"tcp": "journal is 9s behind", "udp": "not running"})
        self.assertEqual(health(self.daemon), json.loads(body)["problems"])

    def test_stats_and_metrics(self):
        code, body, _ = get(self.root, "/stats")
        self.assertEqual((code, json.loads(body)), (200, self.daemon.stats()))
        Counter("relayd_things", "things", registry=self.daemon.registry).inc(2)
        code, body, request = get(self.root, "/metrics")
        self.assertEqual(metric_value(body.decode(), "relayd_things_total"), 2.0)
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])


class TokenTests(unittest.TestCase):
    def setUp(self):
        daemon = FakeDaemon()
        daemon.startService()
        self.root = Root(daemon, token="s3cret")

    def test_every_page_needs_the_token(self):
        for page in ("/health", "/stats", "/metrics"):
            code, body, request = get(self.root, page)
            self.assertEqual(code, 401)
            self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="relayd"'])
            self.assertEqual(get(self.root, page, b"Bearer wrong")[0], 401)
            self.assertEqual(get(self.root, page, b"Bearer s3cret")[0], 200)


class ServiceTests(unittest.TestCase):
    def test_token_file_and_process_metrics(self):
        token_file = self.mktemp()
        with open(token_file, "w") as f:
            f.write("from-a-file\nonly the first line is the token\n")
        daemon = FakeDaemon()
        daemon.reactor = MemoryReactorClock()
        daemon.settings = config.parse(f"[http]\nlisten = tcp:0\ntoken_file = {token_file}\n"
                                       "stats_interval = 0\n")
        service = MonitorService(daemon, daemon.settings.http)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.root.token, "from-a-file")
        self.assertEqual([isinstance(s, StreamServerEndpointService) for s in service], [True])
        text = get(service.root, "/metrics", b"Bearer from-a-file")[1].decode()
        self.assertEqual(metric_value(text, "relayd_uptime_seconds"), 7.0)
        self.assertIsNotNone(metric_value(text, "process_cpu_seconds_total"))


class StatsLogTests(unittest.TestCase):
    def test_logs_flat_stats_every_interval(self):
        daemon = FakeDaemon()
        logger = StatsLogger(daemon, 60)
        with capturedLogs() as events:
            logger.startService()
            daemon.reactor.advance(60)
            logger.stopService()
        lines = [e for e in events if "line" in e]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["line"], "relay=relay1 tcp.connections=1")
        self.assertEqual(lines[0]["stats"], daemon.stats())

    def test_a_failing_stats_is_logged_and_the_timer_goes_on(self):
        daemon = FakeDaemon()
        daemon.stats = lambda: 1 / 0
        logger = StatsLogger(daemon, 60)
        with capturedLogs() as events:
            logger.startService()
            daemon.reactor.advance(60)
            logger.stopService()
        self.assertEqual(len([e for e in events if "log_failure" in e]), 2)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_flatten(self):
        self.assertEqual(flatten({"a": {"b": 1, "c": [1]}, "d": 2.5, "e": None}),
                         {"a.b": 1, "d": 2.5})
