"""The seed-001 JSON datagrams, plus relayd's additions.

Outgoing packets keep the seed's exact keys and ``json.dumps`` default
separators, so the seed's clients parse them unchanged.  ``decode`` turns a
datagram into a dict and raises PacketError with a machine-readable code.
"""
import functools
import ipaddress
import json
from typing import Any

import msgspec

from relayd.core.message import valid_peer_id

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


class _RelayHead(msgspec.Struct, gc=False):
    """What the relay path reads of a ``relay`` packet; ``payload`` stays raw JSON bytes."""
    type: str
    target: Any = None
    payload: msgspec.Raw = msgspec.Raw()
    cookie: Any = None


_relay_head = msgspec.json.Decoder(_RelayHead)


def relay_fields(data, name_limit=64):
    """``(target, payload JSON bytes)`` of a plain ``relay`` packet, or None.

    The payload is neither decoded nor re-encoded.  None means "take the
    full parse": not a relay, or anything unusual (invalid UTF-8 or JSON,
    JSON the standard module accepts but strict parsers do not, a bad
    ``target``, no payload, a cookie), which ``decode`` and the handlers
    then answer as always.
    """
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        head = _relay_head.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        return None
    target = head.target
    if (head.type != "relay" or not head.payload or head.cookie is not None
            or not isinstance(target, str) or not 0 < len(target) <= name_limit):
        return None
    return target, head.payload


def payload_json(payload):
    """A decoded payload back to JSON bytes (the full parse's relay path)."""
    return json.dumps(payload).encode("utf-8")


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


def name_field(packet, key, required=True, limit=64):
    """``field`` for a peer name, which also follows relayd's one rule for ids and names."""
    value = field(packet, key, required, limit)
    reason = None if value is None else valid_peer_id(value)
    if reason is not None:
        raise PacketError("bad_request", f"{key}: {reason}")
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


def peer_list(names, more=0):
    """``more``: names still to come (the list was cut by the sender's byte budget)."""
    packet = {"type": "peer_list", "peers": names, "count": len(names)}
    if more:
        packet["more"] = more
    return packet


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


def relayed(from_peer, payload):
    """``payload``: the payload's JSON, as bytes or a buffer (msgspec.Raw)."""
    return b"".join((relayed_head(from_peer), payload, b"}"))


def keepalive_ack(name, now, **extra):
    return {"type": "keepalive_ack", "peer_name": name, "server_time": now, **extra}


def pong(address, now, **extra):
    return {"type": "pong", "server_time": now, "your_address": format_address(address), **extra}


def server_keepalive(name, now):
    return {"type": "server_keepalive", "server_time": now, "peer_name": name}


def connect_peer(name, address, key, authenticated):
    """Sent to both sides of a ``connect`` at once: the other's public endpoint."""
    return {"type": "connect_peer", "peer_name": name, "address": format_address(address),
            "key": key, "authenticated": authenticated}


def error(code, **extra):
    return {"type": "error", "code": code, **extra}
