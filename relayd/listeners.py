"""Listening services from endpoint strings.

Every stream listener of the daemon is built here, so that a port that
cannot be bound stops the daemon with a clear message (``strports.service``
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

from twisted.application import strports
from twisted.protocols.tls import TLSMemoryBIOFactory

from relayd.fdbudget import BudgetedFactory


@dataclass
class Listener:
    """A section's listening service and the factory it serves."""
    description: str
    factory: object             # the service's own factory, before TLS and the budget
    service: object
    tls: bool


def tls_wanted(daemon, description):
    """True when ``[tls] listeners`` names a section listening on ``description``."""
    tls = daemon.settings.get("tls")
    if tls is None:
        return False
    return any(getattr(daemon.settings.get(name), "listen", None) == description
               for name in tls.listeners)


def section_of(daemon, description):
    """The name of the section whose ``listen`` is ``description`` (else the string)."""
    for name in ("tcp", "http", "admin", "federation", "libp2p"):
        if getattr(daemon.settings.get(name), "listen", None) == description:
            return name
    return description


def stream_service(daemon, description, factory, tls=None):
    """A service listening on ``description`` (an endpoint string).

    ``tls`` forces TLS on (True) or off (False); by default it follows
    ``[tls] listeners``.  TLS uses ``daemon.tls`` (``relayd.tls.ServerTLS``).
    """
    if tls is None:
        tls = tls_wanted(daemon, description)
    served = factory
    if tls:
        if daemon.tls is None:
            raise ValueError(f"listener {description} wants TLS but [tls] is not configured")
        served = TLSMemoryBIOFactory(daemon.tls, False, served)
        daemon.tls.listeners.append(description)
    section = section_of(daemon, description)
    budget = getattr(daemon, "fd_budget", None)
    if budget is not None:
        served = BudgetedFactory(served, budget, section)
    service = strports.service(description, served, reactor=daemon.reactor)
    registry = getattr(daemon, "listeners", None)
    if registry is not None:
        registry[section] = Listener(description, factory, service, bool(tls))
    return service


def rebind(daemon, section, description):
    """Move ``section``'s listener to ``description`` (and TLS to what ``[tls]`` now
    says): the new port is bound first, then the old one closed; connections
    already made stay.  Returns a line for the reload summary."""
    old = daemon.listeners[section]
    if daemon.tls is not None and old.description in daemon.tls.listeners:
        daemon.tls.listeners.remove(old.description)
    try:
        new = stream_service(daemon, description, old.factory)
        new.privilegedStartService()
    except Exception as e:
        daemon.listeners[section] = old
        if old.tls and daemon.tls is not None:
            daemon.tls.listeners.append(old.description)
        return f"[{section}] listen: cannot listen on {description} ({e}); still on {old.description}"
    parent = old.service.parent
    old.service.disownServiceParent()
    new.setServiceParent(parent)
    if hasattr(parent, "listen"):       # the address a service shows in its stats
        parent.listen = description
    tls = "with TLS" if daemon.listeners[section].tls else "without TLS"
    return f"[{section}] listen: now {description} ({tls})"


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
