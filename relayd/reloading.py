"""What a reload (SIGHUP, or ``reload()`` in the admin console) can apply.

``plan(old, new)`` compares two Settings and sorts every changed key:

* keys a running service takes from its reload hook (``APPLIED``);
* ``listen`` of a stream listener (``MOVABLE``): the listener is moved, the
  new address bound before the old one closes;
* ``[tls] listeners``: listeners that gain or lose TLS are bound again;
* a new ``[admin]``, ``[http]`` or ``[tls]`` section: the service starts;
* anything else: ``[section] key: needs a restart``, logged and returned.
"""
from dataclasses import dataclass, field

from relayd.listeners import tls_wanted

ALL = None      # every key of the section

APPLIED = {
    "ratelimit": ALL,
    "tcp": {"max_line", "max_connections", "max_connections_per_ip", "idle_timeout",
            "handshake_timeout", "output_buffer", "history_limit", "require_auth"},
    "udp": {"max_peers", "stale_after", "rate", "burst", "claim_rate", "claim_burst",
            "max_sources", "peer_list_max", "announce_limit"},
    "admin": {"authorized_keys", "login_timeout", "max_connections", "max_connections_per_ip"},
    "tls": {"cert", "key", "client_ca", "require_client_cert"},
    "federation": {"peers_file", "max_hops", "handshake_timeout", "keepalive", "dead_after",
                   "sync_batch", "link_buffer"},
    "libp2p": {"announce", "max_reservations", "max_reservations_per_peer",
               "max_reservations_per_ip", "reservation_ttl", "max_circuits",
               "max_circuits_per_peer", "circuit_duration", "circuit_bytes", "reservation_rate",
               "circuit_rate", "rate_window", "max_connections", "max_connections_per_ip",
               "idle_timeout", "handshake_timeout", "connect_timeout"},
}
MOVABLE = ("tcp", "http", "admin", "federation")       # sections whose listen a reload moves
STARTABLE = ("tls", "admin", "http")                   # sections a reload can add


@dataclass
class Plan:
    applied: list = field(default_factory=list)        # "[section] key" taken by hooks
    moves: dict = field(default_factory=dict)          # section -> new listen
    start: list = field(default_factory=list)          # sections to start
    restart: list = field(default_factory=list)        # "[section] key" needing a restart


def _values(section):
    return {} if section is None else vars(section)


def _movable(name, settings):
    """A cluster node's federation listener follows the node's leadership:
    it moves at a restart only."""
    return name in MOVABLE and not (name == "federation" and settings.get("cluster") is not None)


def plan(old, new):
    """Sort what differs between Settings ``old`` and ``new``."""
    result = Plan()
    names = sorted(set(old._sections) | set(new._sections))
    for name in names:
        before, after = old.get(name), new.get(name)
        if before is None:
            (result.start.append(name) if name in STARTABLE
             else result.restart.append(f"[{name}]"))
            continue
        if after is None:
            result.restart.append(f"[{name}] (removed)")
            continue
        a, b = _values(before), _values(after)
        for key in sorted(k for k in a if a[k] != b.get(k)):
            label = f"[{name}] {key}"
            if key == "listen" and _movable(name, new):
                result.moves[name] = b[key]
            elif key == "listeners" and name == "tls":
                result.applied.append(label)
            elif APPLIED.get(name, ()) is ALL or key in APPLIED.get(name, ()):
                result.applied.append(label)
            else:
                result.restart.append(label)
    old_peers, new_peers = old.named("peer"), new.named("peer")
    if old_peers != new_peers and new.get("federation") is not None \
            and old.get("federation") is not None:
        result.applied.append("[peer:*]")
    elif old_peers != new_peers:
        result.restart.append("[peer:*]")
    return result


def tls_changes(daemon):
    """Sections whose listener should now gain or lose TLS (``[tls] listeners``)."""
    return [section for section, listener in daemon.listeners.items()
            if tls_wanted(daemon, listener.description) != listener.tls]
