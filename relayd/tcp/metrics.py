"""The TCP relay's Prometheus counters kept as plain integers (read at scrape time)."""
from prometheus_client.core import CounterMetricFamily


class TCPCollector:
    """Bytes of the client protocol read and written (before TLS), and
    messages refused by the per-IP rate limit."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        s = self.service
        for name, doc, value in (
                ("relayd_tcp_received_bytes_total", "Bytes read from clients", s.bytes_received),
                ("relayd_tcp_sent_bytes_total", "Bytes written to clients", s.bytes_sent),
                ("relayd_rate_limited_total", "Messages refused by the per-IP rate limit",
                 s.guard.rate_limited)):
            yield CounterMetricFamily(name, doc, value=value)
