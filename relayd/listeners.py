"""Listening services from endpoint strings.

Every stream listener of the daemon is built here, so that a port that
cannot be bound stops the daemon with a clear message (``strports.service``
raises synchronously in privilegedStartService), and so that the ``[tls]``
section can put TLS in front of any listener: a listener whose endpoint
string is the ``listen`` key of a section named in ``[tls] listeners`` is
served over TLS with the daemon's reloadable certificates.
"""
import re

from OpenSSL import SSL
from twisted.application import strports
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from relayd.config import SCHEMA


def tls_section(daemon, description):
    """The section named in ``[tls] listeners`` that listens on ``description``, or None."""
    tls = daemon.settings.get("tls")
    if tls is None:
        return None
    for name in tls.listeners:
        if getattr(daemon.settings.get(name), "listen", None) == description:
            return name
    return None


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


def stream_service(daemon, description, factory, tls=None, backlog=None):
    """A service listening on ``description`` (an endpoint string).

    ``tls`` forces TLS on (True) or off (False); by default it follows
    ``[tls] listeners``.  TLS uses ``daemon.tls`` (``relayd.tls.ServerTLS``).
    ``backlog`` is the listen backlog of a TCP or TLS endpoint that does not
    give its own ``backlog=``.
    """
    section = tls_section(daemon, description)
    if tls is None:
        tls = section is not None
    if tls:
        if daemon.tls is None:
            raise ValueError(f"listener {description} wants TLS but [tls] is not configured")
        factory = CountingTLSFactory(daemon.tls, factory, section or description)
        daemon.tls.listeners.append(description)
    if backlog is not None:
        description = with_backlog(description, backlog)
    return strports.service(description, factory, reactor=daemon.reactor)


def _endpoint_port(value):
    """The port of an endpoint string (or a bare port number), else None."""
    if isinstance(value, int):
        return value
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
            if key.startswith("listen") and _endpoint_port(value) == error.port:
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
