"""Multiaddrs: text <-> binary for the protocols a TCP relay meets."""
import ipaddress

from relayd.libp2p import varint
from relayd.libp2p.peerid import PeerId

# name -> (code, kind); kind: fixed size in bytes, "var" (length-prefixed), or 0 (no value)
PROTOCOLS = {
    "ip4": (0x04, 4), "tcp": (0x06, 2), "udp": (0x0111, 2), "ip6": (0x29, 16),
    "dns": (0x35, "var"), "dns4": (0x36, "var"), "dns6": (0x37, "var"), "dnsaddr": (0x38, "var"),
    "p2p": (0x01A5, "var"), "p2p-circuit": (0x0122, 0), "quic-v1": (0x01CC, 0),
    "ws": (0x01DD, 0), "wss": (0x01DE, 0), "tls": (0x01C0, 0),
}
_BY_CODE = {code: (name, kind) for name, (code, kind) in PROTOCOLS.items()}


def _value_to_bytes(name, text):
    if name == "ip4":
        return ipaddress.IPv4Address(text).packed
    if name == "ip6":
        return ipaddress.IPv6Address(text).packed
    if name in ("tcp", "udp"):
        port = int(text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        return port.to_bytes(2, "big")
    if name == "p2p":
        return varint.prefixed(PeerId.from_string(text).bytes)
    return varint.prefixed(text.encode("utf-8"))


def _value_to_text(name, value):
    if name == "ip4":
        return str(ipaddress.IPv4Address(value))
    if name == "ip6":
        return str(ipaddress.IPv6Address(value))
    if name in ("tcp", "udp"):
        return str(int.from_bytes(value, "big"))
    if name == "p2p":
        return str(PeerId(value))
    return value.decode("utf-8")


def to_bytes(text):
    """``/ip4/1.2.3.4/tcp/4001/p2p/12D3...`` -> binary; ValueError when malformed."""
    if not text.startswith("/"):
        raise ValueError(f"{text!r}: a multiaddr starts with /")
    parts = text.strip("/").split("/")
    out = bytearray()
    i = 0
    while i < len(parts):
        name = parts[i]
        if name == "ipfs":
            name = "p2p"
        if name not in PROTOCOLS:
            raise ValueError(f"{text!r}: unknown protocol {name!r}")
        code, kind = PROTOCOLS[name]
        out += varint.encode(code)
        if kind != 0:
            if i + 1 >= len(parts):
                raise ValueError(f"{text!r}: {name} needs a value")
            out += _value_to_bytes(name, parts[i + 1])
            i += 1
        i += 1
    return bytes(out)


def to_string(data):
    """Binary multiaddr -> text; ValueError when malformed or unknown."""
    out = []
    pos = 0
    try:
        while pos < len(data):
            code, pos = varint.decode(data, pos)
            if code not in _BY_CODE:
                raise ValueError(f"unknown multiaddr code {code:#x}")
            name, kind = _BY_CODE[code]
            out.append("/" + name)
            if kind == 0:
                continue
            if kind == "var":
                length, pos = varint.decode(data, pos)
            else:
                length = kind
            if pos + length > len(data):
                raise ValueError("truncated multiaddr")
            out.append("/" + _value_to_text(name, data[pos:pos + length]))
            pos += length
    except varint.Incomplete:
        raise ValueError("truncated multiaddr") from None
    return "".join(out)


def from_address(address):
    """A Twisted IPv4/IPv6 address -> ``/ip4|ip6/<host>/tcp|udp/<port>``."""
    host = address.host.split("%")[0]
    family = "ip6" if ":" in host else "ip4"
    return f"/{family}/{host}/{'udp' if address.type == 'UDP' else 'tcp'}/{address.port}"


def multiaddr_list(text):
    """Config converter: comma/space separated multiaddrs, each checked by encoding it."""
    addrs = [a for a in text.replace(",", " ").split() if a]
    for addr in addrs:
        to_bytes(addr)
    return addrs
