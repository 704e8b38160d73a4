"""The seed-001 JSON datagrams, plus relayd's additions.

Outgoing packets keep the seed's exact keys and ``json.dumps`` default
separators, so the seed's clients parse them unchanged.  ``decode`` turns a
datagram into a dict and raises PacketError with a machine-readable code.
"""
import functools
import ipaddress
import json

from relayd import finitejson, names


class PacketError(ValueError):
    """A datagram that is not a usable rendezvous packet."""

    def __init__(self, code, detail=""):
        super().__init__(detail or code)
        self.code = code


def encode(packet):
    return json.dumps(packet).encode("utf-8")


def decode(data):
    """Bytes -> packet dict with a string ``type``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError("bad_utf8") from None
    try:
        packet = finitejson.loads(text)
    except (ValueError, RecursionError):      # RecursionError: nested too deep
        raise PacketError("bad_json") from None
    if not isinstance(packet, dict) or not isinstance(packet.get("type"), str):
        raise PacketError("bad_request", "a packet is a JSON object with a string type")
    return packet


def field(packet, key, required=True, limit=256):
    """``packet[key]``: a string of 1 to ``limit`` characters following the
    name rule of ``relayd.names`` (every name and key a client sends)."""
    value = packet.get(key)
    if value is None and not required:
        return None
    reason = names.problem(value, key, limit)
    if reason is not None:
        raise PacketError("bad_request", reason)
    return value


def plain_host(host):
    """An IPv4-mapped IPv6 host (dual-stack socket) as plain IPv4."""
    if ":" in host:
        mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return host


def format_address(address):
    """``ip:port`` for IPv4 (what the seed's clients split on ':'), ``[ip]:port`` for IPv6."""
    host, port = plain_host(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def register_ack(address, now, name, **extra):
    return {"type": "register_ack", "status": "success", "your_address": format_address(address),
            "server_time": now, "peer_name": name, **extra}


def peer_list(names):
    return {"type": "peer_list", "peers": names, "count": len(names)}


def peer_joined(name, names):
    return {"type": "peer_joined", "peer_name": name, "peers": names}


def peer_left(name, names):
    return {"type": "peer_left", "peer_name": name, "peers": names}


@functools.lru_cache(maxsize=4096)
def relayed_head(from_peer):
    """The relayed_packet wrapper up to its payload, as bytes.

    ``relayed(...)`` is this head + the payload's JSON + ``b"}"``: the hot
    path splices the payload in without building a dict.
    """
    return ('{"type": "relayed_packet", "from_peer": ' + json.dumps(from_peer)
            + ', "via_relay": true, "payload": ').encode("utf-8")


def relayed(from_peer, payload_json):
    return relayed_head(from_peer) + payload_json + b"}"


def keepalive_ack(name, now):
    return {"type": "keepalive_ack", "peer_name": name, "server_time": now}


def pong(address, now):
    return {"type": "pong", "server_time": now, "your_address": format_address(address)}


def server_keepalive(name, now):
    return {"type": "server_keepalive", "server_time": now, "peer_name": name}


def connect_peer(name, address, key, authenticated):
    """Sent to both sides of a ``connect`` at once: the other's public endpoint."""
    return {"type": "connect_peer", "peer_name": name, "address": format_address(address),
            "key": key, "authenticated": authenticated}


def error(code, **extra):
    return {"type": "error", "code": code, **extra}
