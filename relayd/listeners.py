"""Listening services from endpoint strings.

Every stream listener of the daemon is built here, so that a port that
cannot be bound stops the daemon with a clear message (``ListeningService``
raises synchronously in privilegedStartService), and so that the ``[tls]``
section can put TLS in front of any listener: a listener whose endpoint
string is the ``listen`` key of a section named in ``[tls] listeners`` is
served over TLS with the daemon's reloadable certificates.

Every listener also takes its connections from the daemon's file-descriptor
budget (``relayd.fdbudget``), and is recorded in ``daemon.listeners`` by
section so that a reload can move it (``rebind``).
"""
import re
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from relayd.config import SCHEMA


@implementer(IProtocolFactory, ILoggingContext)
class ListenerFactory:
    """What a listening port builds from: the service's factory, behind TLS
    when ``tls`` is set (a reload can switch it), and within the daemon's fd
    budget (the descriptor is given back when the connection is lost)."""

    def __init__(self, factory, budget, section):
        self.factory = factory
        self.budget = budget
        self.section = section
        self.tls = None                 # a TLSMemoryBIOFactory around ``factory``, or None
        if budget is not None:
            budget.register(section)

    def logPrefix(self):
        inner = getattr(self.factory, "logPrefix", None)
        return inner() if inner is not None else self.factory.__class__.__name__

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        budget = self.budget
        if budget is not None and not budget.admit(self.section):
            return None
        proto = (self.tls or self.factory).buildProtocol(addr)
        if budget is None:
            return proto
        if proto is None:
            budget.release(self.section)
            return None
        lost, section = proto.connectionLost, self.section

        def connectionLost(reason):
            budget.release(section)
            return lost(reason)
        proto.connectionLost = connectionLost
        return proto


class ListeningService(StreamServerEndpointService):
    """``strports.service``'s service, listening only once per start: a parent
    that is already running calls privilegedStartService again when the
    service is added, and a reload binds the new address before adding it."""

    def __init__(self, reactor, description, factory):
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self._raiseSynchronously = True     # a port that cannot be bound raises at once

    def privilegedStartService(self):
        if self._waitingForPort is None:
            super().privilegedStartService()

    def stopService(self):
        """Stop listening; a later start listens again (a cluster's federation
        listener follows the node's leadership)."""
        d = super().stopService()
        self._waitingForPort = None
        return d


@dataclass
class Listener:
    """A section's listening service and what it serves."""
    description: str
    factory: ListenerFactory
    service: object
    backlog: int = None

    @property
    def tls(self):
        return self.factory.tls is not None


class _HandshakeCounting(TLSMemoryBIOProtocol):
    """Counts a connection whose TLS handshake failed (a TLS error before it
    completed, once the client sent something: a bare connect and close, as
    port probes do, is not a handshake) in ``factory.failures[factory.section]``."""

    _spoke = False

    def dataReceived(self, data):
        self._spoke = True
        super().dataReceived(data)

    def _tlsShutdownFinished(self, reason):
        if (self._spoke and not self._handshakeDone and reason is not None
                and reason.check(SSL.Error)):
            self.factory.failures[self.factory.section] += 1
        super()._tlsShutdownFinished(reason)


class CountingTLSFactory(TLSMemoryBIOFactory):
    """TLS in front of ``factory``; failed handshakes counted in
    ``tls.handshake_failures[section]`` (``relayd_tls_handshake_failures_total``)."""

    protocol = _HandshakeCounting

    def __init__(self, tls, factory, section):
        super().__init__(tls, False, factory)
        self.failures = tls.handshake_failures
        self.section = section


def tls_section(daemon, description):
    """The section named in ``[tls] listeners`` that listens on ``description``, or None."""
    tls = daemon.settings.get("tls")
    if tls is None:
        return None
    for name in tls.listeners:
        if getattr(daemon.settings.get(name), "listen", None) == description:
            return name
    return None


def tls_wanted(daemon, description):
    """True when ``[tls] listeners`` names a section listening on ``description``."""
    return tls_section(daemon, description) is not None


def section_of(daemon, description):
    """The name of the section whose ``listen`` is ``description`` (else the string)."""
    for name in ("tcp", "http", "admin", "federation", "libp2p"):
        if getattr(daemon.settings.get(name), "listen", None) == description:
            return name
    return description


def stream_service(daemon, description, factory, tls=None, backlog=None):
    """A service listening on ``description`` (an endpoint string).

    ``tls`` forces TLS on (True) or off (False); by default it follows
    ``[tls] listeners``.  TLS uses ``daemon.tls`` (``relayd.tls.ServerTLS``).
    ``backlog`` is the listen backlog of a TCP or TLS endpoint that does not
    give its own ``backlog=``.
    """
    section = section_of(daemon, description)
    served = ListenerFactory(factory, getattr(daemon, "fd_budget", None), section)
    set_tls(daemon, served, description, tls_wanted(daemon, description) if tls is None else tls)
    bound = description if backlog is None else with_backlog(description, backlog)
    service = ListeningService(daemon.reactor, bound, served)
    registry = getattr(daemon, "listeners", None)
    if registry is not None:
        registry[section] = Listener(description, served, service, backlog)
    return service


def set_tls(daemon, served, description, tls):
    """Serve new connections of a listener with or without TLS."""
    if tls and daemon.tls is None:
        raise ValueError(f"listener {description} wants TLS but [tls] is not configured")
    if tls and served.tls is None:
        served.tls = CountingTLSFactory(daemon.tls, served.factory, served.section)
        daemon.tls.listeners.append(description)
    elif not tls and served.tls is not None:
        served.tls = None
        if daemon.tls is not None and description in daemon.tls.listeners:
            daemon.tls.listeners.remove(description)
def retls(daemon, section):
    """Follow a changed ``[tls] listeners`` for new connections; a summary line."""
    listener = daemon.listeners[section]
    set_tls(daemon, listener.factory, listener.description,
            tls_wanted(daemon, listener.description))
    return f"[{section}] TLS: {'on' if listener.tls else 'off'} for new connections"


def rebind(daemon, section, description):
    """Move ``section``'s listener to ``description``: the new address is bound
    first, then the old one closed; connections already made stay.  Returns a
    line for the reload summary."""
    old = daemon.listeners[section]
    set_tls(daemon, old.factory, old.description, False)
    try:
        new = stream_service(daemon, description, old.factory.factory, backlog=old.backlog)
        new.privilegedStartService()
    except Exception as e:
        daemon.listeners[section] = old
        set_tls(daemon, old.factory, old.description, tls_wanted(daemon, description))
        return f"[{section}] listen: cannot listen on {description} ({e}); still on {old.description}"
    parent = old.service.parent
    old.service.disownServiceParent()
    new.setServiceParent(parent)
    if hasattr(parent, "listen"):       # the address a service shows in its stats
        parent.listen = description
    tls = "with TLS" if daemon.listeners[section].tls else "without TLS"
    return f"[{section}] listen: now {description} ({tls})"


def _endpoint_port(value):
    """The port of an endpoint string, a ``(host, port)`` pair or a bare port
    number, else None."""
    if isinstance(value, int):
        return value
    if isinstance(value, tuple):
        return value[1]
    for part in re.split(r"(?<!\\):", str(value))[1:]:
        number = part[5:] if part.startswith("port=") else part
        if number.isdigit():
            return int(number)
    return None


def listen_failure(settings, error):
    """One line naming ``[section] key`` and the address of a CannotListenError."""
    where = "a listener"
    for name in SCHEMA:
        section = settings.get(name)
        for key, value in sorted(vars(section).items()) if section is not None else ():
            if "listen" in key.split("_") and _endpoint_port(value) == error.port:
                where = f"[{name}] {key} = {value}"
                break
        else:
            continue
        break
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    host = error.interface or "*"
    return f"{where}: cannot listen on {host}:{error.port}: {reason}"


def with_backlog(description, backlog):
    """``description`` with ``backlog=`` added, unless it is not a TCP or TLS
    endpoint or already gives one."""
    kind = description.partition(":")[0]
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def tcp_address(description):
    """``(host, port)`` of a ``tcp:`` endpoint string; host defaults to 127.0.0.1.

    Raises ValueError for other endpoint types.
    """
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"{description!r} is not a tcp: endpoint")
    positional, keywords = [], {}
    for part in re.split(r"(?<!\\):", rest):
        key, eq, value = part.partition("=")
        if eq:
            keywords[key] = value.replace("\\", "")
        else:
            positional.append(part)
    port = int(keywords.get("port", positional[0] if positional else "0"))
    host = keywords.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = "::1" if kind == "tcp6" else "127.0.0.1"
    return host, port
