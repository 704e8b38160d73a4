"""The rendezvous socket: Twisted's UDP port, with each destination host checked once.

``udp.Port.write`` checks on every datagram, three times over, that the
host is an IP address of the socket's family: about a third of what a
relayed datagram costs in Python.  The rendezvous only answers addresses
its own ``recvfrom`` gave it, so ``RendezvousPort.write`` lets the first
datagram to a host take the full path and sends later ones straight to the
socket; any socket error goes through ``udp.Port.write`` again, which maps
it as it always does.
"""
from twisted.application import internet
from twisted.internet import udp
from twisted.internet.interfaces import IReactorFDSet

MAX_HOSTS = 65536


class RendezvousPort(udp.Port):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checked = set()          # hosts udp.Port.write accepted

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
