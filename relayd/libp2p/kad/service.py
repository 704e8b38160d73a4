"""``[kad]``: the Kademlia DHT server on the ``[libp2p]`` listener.

Provider records and stored values are kept across a restart in
``<data_dir>/kad_state.json`` (a ``core.tablefile``): read once at
start-up, written on the file pool when they changed (every
``save_interval`` and at stop).  relayd
provides the ``rendezvous`` keys itself and stores its seed-002 relay
advertisements under ``/descord/relay/advertisements`` and ``/descord/relays``.
"""
import json
import os

from prometheus_client import Gauge
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import succeed
from twisted.logger import Logger

from relayd.core.tablefile import TableFile
from relayd.libp2p.hub_metrics import KadCollector
from relayd.libp2p.kad import server
from relayd.libp2p.kad.providers import ProviderStore
from relayd.libp2p.kad.records import RecordStore
from relayd.libp2p.kad.routing import RoutingTable
from relayd.libp2p.resources import RateLimiter

STATE_FILE = "kad_state.json"
DESCORD_KEYS = (b"/descord/relay/advertisements", b"/descord/relays")


class KadState(TableFile):
    """``kad_state.json``: ``{"providers": [...], "records": [...]}``, the
    stores' own snapshots."""

    log = Logger(namespace="relayd.kad")

    def __init__(self, path, file_pool, providers, records):
        super().__init__(path, file_pool)
        self.providers = providers
        self.records = records

    def load(self):
        """Read the saved providers and records (start-up only); a damaged
        file is logged and set aside, since the records come back as peers
        re-announce them."""
        self.loaded = True
        try:
            with open(self.path, "rb") as f:
                state = json.loads(f.read())
            self.providers.restore(state["providers"])
            self.records.restore(state["records"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as e:
            self.log.error("[kad] {path} is damaged ({error}); starting with no stored records",
                           path=self.path, error=str(e))
            os.replace(self.path, self.path + ".damaged")
            return
        self.log.info("kad: {providers} provider records and {records} values restored",
                      providers=len(self.providers), records=len(self.records.records))

    def snapshot(self):
        return {"providers": self.providers.snapshot(), "records": self.records.snapshot()}

    @staticmethod
    def encode(snapshot):
        return json.dumps(snapshot).encode()


class KadService(MultiService):
    log = Logger(namespace="relayd.kad")

    def __init__(self, daemon, libp2p, book, settings, reactor):
        super().__init__()
        self.setName("kad")
        self.daemon = daemon
        self.libp2p = libp2p
        self.settings = settings
        self.reactor = reactor
        self.dht = None
        self.providers = ProviderStore(reactor, settings.provider_ttl, settings.max_providers_per_key,
                                       settings.max_keys_per_provider, settings.max_provider_keys)
        self.records = RecordStore(reactor, settings.record_ttl, settings.max_record_size,
                                   settings.max_records)
        self.state = KadState(os.path.join(daemon.settings.relay.data_dir, STATE_FILE),
                              daemon.file_pool, self.providers, self.records)
        self.state.setServiceParent(self)
        self.book = book                # identify answers of connected peers
        libp2p.add_protocol(settings.protocol, lambda conn: server.KadStream(self.dht, conn))
        for interval, work in ((settings.save_interval, self.save),
                               (settings.advertise_interval, self.advertise)):
            timer = TimerService(interval, work)
            timer.clock = reactor
            timer.setServiceParent(self)
        for name, doc, read in (
                ("relayd_kad_routing_table_peers", "Peers in the DHT routing table",
                 lambda: len(self.dht.table) if self.dht else 0),
                ("relayd_kad_provider_records", "Provider records held", lambda: len(self.providers)),
                ("relayd_kad_value_records", "Value records held", lambda: len(self.records.records))):
            Gauge(name, doc, registry=daemon.registry).set_function(read)
        daemon.registry.register(KadCollector(self))

    def startService(self):
        keypair = self.libp2p.keypair
        table = RoutingTable(keypair.peer_id, self.reactor, self.settings.k)
        self.dht = server.Dht(keypair.peer_id, table, self.providers, self.records, self.book,
                              self.own_addrs, self.settings.protocol)
        self.dht.own_keys = {server.rendezvous_key(r) for r in self.settings.rendezvous}
        self.dht.limiter = RateLimiter(self.reactor, self.settings.request_rate,
                                       self.settings.request_window)
        self.book.listeners.append(self.dht)
        super().startService()
        self.log.info("kad DHT server on {protocol} (k={k}); providing {rendezvous}",
                      protocol=self.settings.protocol, k=self.settings.k,
                      rendezvous=" ".join(self.settings.rendezvous) or "nothing")

    def stopService(self):
        d = super().stopService()
        d.addCallback(lambda _: self.save())
        return d

    def own_addrs(self):
        suffix = f"/p2p/{self.libp2p.keypair.peer_id}"
        return [a[:-len(suffix)] if a.endswith(suffix) else a for a in self.libp2p.announce_addrs()]

    def advertise(self):
        """Store relayd's seed-002 advertisements (both keys, both shapes)."""
        if self.dht is None or not self.settings.advertise_descord or not self.libp2p.listen_addrs:
            return
        s, now = self.libp2p.settings, int(self.reactor.seconds())
        common = {"peer_id": str(self.libp2p.keypair.peer_id), "addresses": self.own_addrs(),
                  "timestamp": now}
        values = (dict(common, max_circuits=s.max_circuits,
                       max_circuit_bandwidth_mb=s.circuit_bytes // (1024 * 1024)),
                  dict(common, capacity=s.max_circuits, mode="relay"))
        for key, value in zip(DESCORD_KEYS, values):
            self.records.put(key, json.dumps(value).encode(), None)

    def save(self):
        """Write providers and records if they changed; fires when written."""
        if self.dht is not None:
            self.dht.limiter.prune()
        if self.dht is None or not self.dht.changed:
            return succeed(None)
        self.providers.expire()
        self.records.expire()
        self.dht.changed = False
        return self.state.save()

    def stats(self):
        out = {"providers": len(self.providers), "records": len(self.records.records),
               "providers_refused": self.providers.refused, "records_refused": self.records.refused}
        if self.dht is not None:
            out.update(routing_table=len(self.dht.table), malformed=self.dht.malformed,
                       rate_limited=self.dht.rate_limited,
                       requests=dict(self.dht.requests))
        return out
