"""The rendezvous socket: Twisted's UDP port, with each destination host checked once.

``udp.Port.write`` checks on every datagram, three times over, that the
host is an IP address of the socket's family: about a third of what a
relayed datagram costs in Python.  The rendezvous only answers addresses
its own ``recvfrom`` gave it, so ``RendezvousPort.write`` lets the first
datagram to a host take the full path and sends later ones straight to the
socket; any socket error goes through ``udp.Port.write`` again, which maps
it as it always does.

With the native relay (``read_with``, see ``relayd.udp.fastpath``) the
port's reads go through it: the datagrams it does not forward itself reach
the protocol as from Twisted's own ``doRead``.  On the epoll reactor, with
the protocol on the reactor's clock, a drained socket is waited for inside
the native call while nothing else the reactor watches is ready, up to its
next timer (at most MAX_WAIT): the reactor would be asleep there anyway,
and each datagram arriving meanwhile skips a pass through it.
"""
import time

from twisted.application import internet
from twisted.internet import udp
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

MAX_HOSTS = 65536
MAX_WAIT = 0.005      # seconds the native relay waits for the next datagram at most


class RendezvousPort(udp.Port):
    log = Logger()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checked = set()          # hosts udp.Port.write accepted
        self._relay = None             # a _fastrelay.Relay reading this socket
        self._epoll = None             # the reactor's epoll descriptor, to wait on with it

    def read_with(self, relay):
        """Read through ``relay`` (a ``_fastrelay.Relay`` on this socket) from now on."""
        self._relay = relay
        poller = getattr(self.reactor, "_poller", None)       # EPollReactor's
        if poller is not None and self.protocol.clock is self.reactor:
            self._epoll = poller.fileno()

    def _waiting(self):
        """``(deadline, epoll fd)`` for the relay to wait until, or ()."""
        if self._epoll is None:
            return ()
        timeout = self.reactor.timeout()
        wait = MAX_WAIT if timeout is None else min(MAX_WAIT, timeout)
        return time.monotonic() + wait, self._epoll

    def doRead(self):
        if self._relay is None:
            return super().doRead()
        step, protocol, waiting = self._relay.step, self.protocol, self._waiting()
        while True:
            item = step(protocol.clock.seconds(), protocol.datagrams, *waiting)
            if item is None:
                return
            try:
                protocol.datagramReceived(*item)
            except BaseException:          # as udp.Port.doRead: the port keeps reading
                self.log.failure("udp datagram handler failed")

    def write(self, datagram, addr=None):
        if addr is not None and addr[0] in self._checked:
            try:
                return self.socket.sendto(datagram, addr)
            except OSError:
                pass                   # let the full path retry and map the error
        result = super().write(datagram, addr)
        if addr is not None:
            if len(self._checked) >= MAX_HOSTS:
                self._checked.clear()
            self._checked.add(addr[0])
        return result


class RendezvousServer(internet.UDPServer):
    """``internet.UDPServer`` listening with a RendezvousPort.

    A reactor without file descriptors (a test clock that fakes
    ``listenUDP``) gets its own ``listenUDP``.
    """

    def _getPort(self):
        if not IReactorFDSet.providedBy(self.reactor):
            return super()._getPort()
        port, protocol = self.args
        listening = RendezvousPort(port, protocol, reactor=self.reactor, **self.kwargs)
        listening.startListening()
        return listening
