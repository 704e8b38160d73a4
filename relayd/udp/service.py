"""The ``[udp]`` service: the rendezvous socket and its keepalive timer."""
from twisted.application import internet
from twisted.application.service import MultiService
from twisted.logger import Logger

from relayd.udp import packets
from relayd.udp.metrics import UDPCollector
from relayd.udp.port import RendezvousServer
from relayd.udp.protocol import RendezvousProtocol


class UDPService(MultiService):
    """Listens on ``[udp] listen``/``interface``; ``peers()`` feeds the admin console."""

    log = Logger()

    def __init__(self, settings, reactor, registry=None):
        super().__init__()
        self.setName("udp")
        self.settings = settings
        self.protocol = RendezvousProtocol(settings, reactor)
        RendezvousServer(settings.listen, self.protocol, interface=settings.interface,
                         maxPacketSize=settings.max_datagram + 1,
                         reactor=reactor).setServiceParent(self)
        timer = internet.TimerService(settings.keepalive, self._tick)
        timer.clock = reactor
        timer.setServiceParent(self)
        if registry is not None:
            registry.register(UDPCollector(self.protocol))

    def _tick(self):
        try:
            self.protocol.tick()
        except Exception:
            self.log.failure("udp keepalive pass failed")

    def reconfigure(self, settings):
        """Take new limits on reload (the port and interface need a restart)."""
        if settings is not None:
            self.protocol.configure(settings)

    @property
    def port(self):
        """The bound UDP port (useful when ``listen = 0``), or None before start."""
        transport = self.protocol.transport
        return None if transport is None else transport.getHost().port

    def peers(self):
        return [{"name": p.name, "address": packets.format_address(p.address),
                 "last_seen": p.last_seen, "authenticated": p.authenticated}
                for p in self.protocol.table]

    def stats(self):
        counts = self.protocol.counts
        return {"port": self.port, "peers": len(self.protocol.table),
                **{k: v for k, v in sorted(counts.items())}}

    def health(self):
        return None if self.protocol.transport is not None else "udp socket not listening"
