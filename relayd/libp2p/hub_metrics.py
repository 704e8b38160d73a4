"""Prometheus metrics of the hub services, read from their counters at
scrape time (the message path takes no metrics lock)."""
from prometheus_client.core import CounterMetricFamily


class KadCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        requests = CounterMetricFamily("relayd_kad_requests", "DHT requests answered, by type",
                                       labels=["type"])
        dht = self.service.dht
        for kind, count in (dht.requests.items() if dht else ()):
            requests.add_metric([kind], count)
        yield requests
        yield CounterMetricFamily("relayd_kad_malformed", "DHT requests refused as malformed",
                                  value=dht.malformed if dht else 0)


class GossipCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        messages = CounterMetricFamily(
            "relayd_gossipsub_messages", "GossipSub messages by what became of them",
            labels=["event"])
        router = self.service.router
        for event, count in (router.counts.items() if router else ()):
            messages.add_metric([event], count)
        yield messages
        bridge = self.service.bridge
        if bridge is not None:
            bridged = CounterMetricFamily("relayd_bridge_messages",
                                          "Messages across the GossipSub-room bridge",
                                          labels=["direction"])
            for direction, count in bridge.counts.items():
                bridged.add_metric([direction], count)
            yield bridged
