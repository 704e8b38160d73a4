"""Listening services from endpoint strings.

Every stream listener of the daemon is built here, so that a port that
cannot be bound stops the daemon with a clear message (``strports.service``
raises synchronously in privilegedStartService), and so that the ``[tls]``
section can put TLS in front of any listener: a listener whose endpoint
string is the ``listen`` key of a section named in ``[tls] listeners`` is
served over TLS with the daemon's reloadable certificates.
"""
import re

from twisted.application import strports
from twisted.protocols.tls import TLSMemoryBIOFactory


def tls_wanted(daemon, description):
    """True when ``[tls] listeners`` names a section listening on ``description``."""
    tls = daemon.settings.get("tls")
    if tls is None:
        return False
    return any(getattr(daemon.settings.get(name), "listen", None) == description
               for name in tls.listeners)


def stream_service(daemon, description, factory, tls=None, backlog=None):
    """A service listening on ``description`` (an endpoint string).

    ``tls`` forces TLS on (True) or off (False); by default it follows
    ``[tls] listeners``.  TLS uses ``daemon.tls`` (``relayd.tls.ServerTLS``).
    ``backlog`` is the listen backlog of a TCP or TLS endpoint that does not
    give its own ``backlog=``.
    """
    if tls is None:
        tls = tls_wanted(daemon, description)
    if tls:
        if daemon.tls is None:
            raise ValueError(f"listener {description} wants TLS but [tls] is not configured")
        factory = TLSMemoryBIOFactory(daemon.tls, False, factory)
        daemon.tls.listeners.append(description)
    if backlog is not None:
        description = with_backlog(description, backlog)
    return strports.service(description, factory, reactor=daemon.reactor)


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
