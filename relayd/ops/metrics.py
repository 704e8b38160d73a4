"""Daemon-wide Prometheus metrics, read from the live services at scrape time:
the build, the TLS certificate and handshakes, and the onion service."""
import platform

import twisted
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import relayd


class DaemonCollector:
    """``relayd_build_info``, ``relayd_tls_*`` (with ``[tls]``) and
    ``relayd_tor_onion_published`` (with ``[tor]``)."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        info = GaugeMetricFamily("relayd_build_info", "Always 1; the labels name the build",
                                 labels=["version", "python", "twisted"])
        info.add_metric([relayd.__version__, platform.python_version(), twisted.__version__], 1)
        yield info
        tls = self.daemon.tls
        if tls is not None:
            if tls.material is not None:
                yield GaugeMetricFamily(
                    "relayd_tls_certificate_expiry_timestamp_seconds",
                    "When the served TLS certificate expires (Unix time)",
                    value=tls.material.not_after.timestamp())
            failures = CounterMetricFamily(
                "relayd_tls_handshake_failures_total",
                "TLS handshakes that failed, per listener section", labels=["listener"])
            for section, count in sorted(tls.handshake_failures.items()):
                failures.add_metric([section], count)
            yield failures
        tor = self.daemon.namedServices.get("tor")
        if tor is not None:
            yield GaugeMetricFamily("relayd_tor_onion_published",
                                    "1 while tor has the onion service, else 0",
                                    value=int(tor.published))
