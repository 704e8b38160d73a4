"""/metrics as a Prometheus user sees it: naming (counters end in _total),
one documented name per metric (docs/OPERATIONS.md's table against a live
daemon with every service), the new operational metrics, and the shipped
alert rules (promtool) and Grafana dashboard against the same /metrics."""
import base64
import glob
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import REPO, Relayd, free_port, relay_ini
from tests.doccommands import shell_blocks
from tests.test_client_cli import make_certificates
from tests.test_ops_support import http_get, metric_value

RULES = os.path.join(REPO, "deploy", "prometheus", "relayd-rules.yml")
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "relayd.json")
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = None if PROMTOOL else "needs promtool (Debian package prometheus)"
# Series Prometheus adds itself for every scrape target, not read from /metrics.
SCRAPE_SERIES = {"up"}
CLUSTER_ONLY = "relayd_cluster_"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

EVERYTHING = relay_ini("""
[tls]
cert = {cert}
key = {key}
listeners = tcp
[http]
listen = tcp:{http}:interface=127.0.0.1
[udp]
listen = {udp}
[libp2p]
listen = tcp:{libp2p}:interface=127.0.0.1
[kad]
[gossipsub]
bridge = libp2p-chat
[federation]
listen = tcp:{federation}:interface=127.0.0.1
[peer:relay2]
endpoint = tcp:127.0.0.1:{peer}
key = {peer_key}
[tor]
control_port = tcp:127.0.0.1:{control}
[admin]
listen = tcp:{admin}:interface=127.0.0.1
authorized_keys = {admin_keys}
""")


def documented_metrics():
    """``{name: type}`` from the metrics table of docs/OPERATIONS.md."""
    with open(os.path.join(REPO, "docs", "OPERATIONS.md"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\| `(relayd_[a-z0-9_]+)(?:\{[a-z_,]+\})?` \| (counter|gauge|histogram) \|",
                      text, re.M)
    return dict(rows)


def exposed_metrics(text):
    """``{name a query uses: type}`` of the relayd_ families in Prometheus text."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("relayd_"):
            out[family.name + ("_total" if family.type == "counter" else "")] = family.type
    return out


def queried_metrics(expression):
    """Metric names a PromQL expression reads (histogram series by their family)."""
    names = set(re.findall(r"\b((?:relayd|process|python)_[a-z0-9_]+|up)\b(?!\s*\()", expression))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith("relayd_") and
            n.endswith(HISTOGRAM_SUFFIXES) and "_total" not in n else n for n in names}


class LiveMetricsTests(SynchronousTestCase):
    maxDiff = None
    timeout = 120

    def setUp(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.ca, key, cert = make_certificates(workdir)
        with open(cert, "rb") as f:
            self.not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc
        ports = {name: free_port() for name in
                 ("tcp", "http", "libp2p", "federation", "peer", "control", "admin")}
        ports["udp"] = free_port(socket.SOCK_DGRAM)
        admin_keys = os.path.join(workdir, "admin_keys")
        open(admin_keys, "w").close()
        self.relay = Relayd(self, EVERYTHING, workdir=workdir, cert=cert, key=key,
                            admin_keys=admin_keys,
                            peer_key=base64.b64encode(b"\x01" * 32).decode(), **ports)
        self.relay.start(wait_tcp=[ports["tcp"], ports["http"]])
        self.ports = ports

    def metrics(self):
        status, body, _ = http_get(self.ports["http"], "/metrics")
        self.assertEqual(status, 200)
        return body.decode()

    def test_counters_end_in_total_and_promtool_accepts_the_names(self):
        text = self.metrics()
        for family in text_string_to_metric_families(text):
            if family.type == "counter":
                self.assertTrue(all(s.name.endswith("_total") for s in family.samples), family)
            else:
                self.assertFalse(family.name.endswith("_total"),
                                 f"{family.name} is a {family.type} named like a counter")
        self.assertNotIn("_created", text)
        if PROMTOOL:
            lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, text=True,
                                  capture_output=True, timeout=60)
            self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)

    def test_the_docs_table_lists_every_metric_once_by_its_name(self):
        exposed = exposed_metrics(self.metrics())
        # a cluster node needs an engine: tests/test_cluster_e2e.py checks the
        # relayd_cluster_ rows against a cluster node's /metrics.
        cluster = {name for name in documented_metrics() if name.startswith(CLUSTER_ONLY)}
        self.assertEqual({name: kind for name, kind in documented_metrics().items()
                          if name not in cluster}, exposed)
        exposed = set(exposed) | cluster
        # Anywhere else in the docs, a metric is named as in the table.
        for path in [os.path.join(REPO, "README.md")] + glob.glob(os.path.join(REPO, "docs", "*.md")):
            with open(path, encoding="utf-8") as f:
                mentioned = set(re.findall(r"(?<![\w/])relayd_[a-z0-9_]*[a-z0-9]", f.read()))
            self.assertEqual(mentioned - set(exposed), set(),
                             f"{os.path.basename(path)} names metrics /metrics does not have")

    def test_build_tls_tor_and_tcp_byte_metrics(self):
        import relayd
        text = self.metrics()
        self.assertEqual(metric_value(text, "relayd_build_info", version=relayd.__version__), 1)
        self.assertEqual(metric_value(text, "relayd_tls_certificate_expiry_timestamp_seconds"),
                         self.not_after.timestamp())
        self.assertEqual(metric_value(text, "relayd_tor_onion_published"), 0)
        # A plain-text client on the TLS port: one failed handshake.
        with socket.create_connection(("127.0.0.1", self.ports["tcp"]), timeout=10) as plain:
            plain.sendall(b'{"type": "hello", "id": "mallory"}\n')
            self.assertEqual(plain.recv(100), b"")
        # A TLS client: its line and the answer count as TCP bytes.
        line = b'{"type": "hello", "id": "alice"}\n'
        context = ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", self.ports["tcp"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(line)
                answer = tls.recv(65536)
        self.assertIn(b"welcome", answer)
        deadline = time.monotonic() + 10
        while True:
            text = self.metrics()
            sent = metric_value(text, "relayd_tcp_sent_bytes_total")
            if sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(metric_value(text, "relayd_tls_handshake_failures_total", listener="tcp"), 1)
        self.assertEqual(metric_value(text, "relayd_tcp_received_bytes_total"), len(line))
        self.assertGreaterEqual(sent, len(answer))

    def test_rules_and_dashboard_read_only_metrics_relayd_exposes(self):
        exposed = {f.name + ("_total" if f.type == "counter" else "")
                   for f in text_string_to_metric_families(self.metrics())}
        with open(RULES, encoding="utf-8") as f:
            rules = f.read()
        rule_expressions = re.findall(r"^\s+expr: (.+)$", rules, re.M)
        self.assertGreaterEqual(len(rule_expressions), 10)
        with open(DASHBOARD, encoding="utf-8") as f:
            dashboard = json.load(f)
        panel_expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
        used_by_rules = set().union(*map(queried_metrics, rule_expressions))
        used_by_panels = set().union(*map(queried_metrics, panel_expressions))
        self.assertEqual((used_by_rules | used_by_panels) - exposed - SCRAPE_SERIES, set())
        self.assertEqual(used_by_rules - used_by_panels - SCRAPE_SERIES, set(),
                         "every metric an alert watches has a dashboard panel")
        for name in ("relayd_tls_certificate_expiry_timestamp_seconds", "relayd_tor_onion_published",
                     "relayd_tcp_received_bytes_total", "relayd_tls_handshake_failures_total",
                     "relayd_build_info"):
            self.assertIn(name, used_by_panels)


class AlertRulesTests(SynchronousTestCase):
    skip = NO_PROMTOOL

    def test_promtool_checks_the_rules(self):
        """The command OPERATIONS.md shows, run verbatim from the repository."""
        [[command]] = shell_blocks("docs/OPERATIONS.md", "Alerts and dashboard")
        done = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("SUCCESS: 12 rules found", done.stdout)

    def test_alerts_fire_on_the_series_they_watch(self):
        """promtool's rule unit tests (tests/prometheus/relayd-rules-test.yml)."""
        done = subprocess.run([PROMTOOL, "test", "rules", "relayd-rules-test.yml"],
                              cwd=os.path.join(REPO, "tests", "prometheus"),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
