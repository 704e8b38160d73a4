"""The peer list: ``[peer:NAME]`` sections and the seed's ``relays.json``.

A peer is a relay id, an endpoint to dial and the identity it must prove:
its Ed25519 public key (``key``, base64) or that key's fingerprint
(``sha256:<hex>``), and optionally the SHA-256 fingerprint of the TLS
certificate its link must present.  A peer without one is refused: relayed messages are
only accepted from authenticated peers.
"""
import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass

from twisted.internet import endpoints
from twisted.logger import Logger

from relayd import names

log = Logger()

_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}\Z")


class PeerError(Exception):
    """A peer definition is wrong; the message names where and why."""


@dataclass(frozen=True)
class Peer:
    name: str
    endpoint: str
    fingerprint: str                  # sha256:<hex> of the raw Ed25519 public key
    tls_fingerprint: str = None       # sha256:<hex> of its TLS certificate (DER), if pinned

    def accepts(self, public_bytes):
        return fingerprint(public_bytes) == self.fingerprint


def tls_pin(text, where):
    """``sha256:<hex>`` from ``sha256:<hex>`` or openssl's ``AB:CD:...`` form, or None."""
    if not text:
        return None
    value = text.strip().lower()
    value = value[len("sha256:"):] if value.startswith("sha256:") else value
    value = value.replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise PeerError(f"{where}: tls_fingerprint must be a SHA-256 certificate fingerprint "
                        f"(sha256:<64 hex>, or openssl's AB:CD:... form)")
    return "sha256:" + value


def fingerprint(public_bytes):
    return "sha256:" + hashlib.sha256(public_bytes).hexdigest()


def expected_fingerprint(key, fp, where):
    """The fingerprint a peer must prove, from a base64 key and/or a fingerprint."""
    from_key = None
    if key:
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise PeerError(f"{where}: key must be a base64 Ed25519 public key (32 bytes)")
        from_key = fingerprint(raw)
    if fp:
        fp = fp.strip().lower()
        if not _FINGERPRINT.match(fp):
            raise PeerError(f"{where}: fingerprint must look like sha256:<64 hex digits>")
        if from_key is not None and fp != from_key:
            raise PeerError(f"{where}: key and fingerprint name different keys")
        return fp
    if from_key is None:
        raise PeerError(f"{where}: needs a key or a fingerprint; relayd accepts relayed "
                        f"messages only from peers that prove their identity")
    return from_key


def tcp_endpoint(host, port):
    """A client endpoint string for ``host:port`` (IPv6 colons escaped)."""
    return f"tcp:{host.replace(':', chr(92) + ':')}:{int(port)}"


def read_key_file(path, where):
    """The base64 public key in ``path`` (as written by ``relayd.federation.keys``)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise PeerError(f"{where} key_file: cannot read {path} ({e}); create it with "
                        f"python -m relayd.federation.keys CONFIG...") from None


def from_sections(named):
    """Peers from ``settings.named("peer")``."""
    peers = {}
    for name, section in named.items():
        where = f"[peer:{name}]"
        key = section.key
        if section.key_file:
            if key:
                raise PeerError(f"{where}: give key or key_file, not both")
            key = read_key_file(section.key_file, where)
        peers[name] = Peer(name, section.endpoint,
                           expected_fingerprint(key, section.fingerprint, where),
                           tls_pin(section.tls_fingerprint, where))
    return peers


def parse_relays_json(text, source, own_id):
    """Peers from the seed's ``[{"id", "ip", "port"}]`` (plus ``key``/``fingerprint``).

    The relay's own entry is ignored.  Lines starting with ``#`` (the seed's
    example ends with one) are dropped with a warning naming the file.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        try:
            data = json.loads("\n".join(kept))
        except (ValueError, RecursionError) as e:
            raise PeerError(f"{source}: not valid JSON: {e}") from None
        log.warn("{source}: ignored {count} comment line(s) starting with '#', "
                 "which are not JSON; delete them", source=source,
                 count=len(text.splitlines()) - len(kept))
    if not isinstance(data, list):
        raise PeerError(f"{source}: must be a JSON array of {{\"id\", \"ip\", \"port\"}} objects")
    peers = {}
    for number, item in enumerate(data, 1):
        where = f"{source}: entry {number}"
        if not isinstance(item, dict):
            raise PeerError(f"{where}: must be an object")
        relay_id, ip, port = item.get("id"), item.get("ip"), item.get("port")
        reason = names.problem(relay_id, '"id"')
        if reason is not None:
            raise PeerError(f"{where}: {reason}")
        if relay_id == own_id:
            continue
        where = f"{source}: relay {relay_id!r}"
        if not isinstance(ip, str) or not ip:
            raise PeerError(f"{where}: \"ip\" must be a non-empty string")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise PeerError(f"{where}: \"port\" must be a port number")
        if relay_id in peers:
            raise PeerError(f"{where}: listed twice")
        peers[relay_id] = Peer(relay_id, tcp_endpoint(ip, port), expected_fingerprint(
            item.get("key"), item.get("fingerprint"), where),
            tls_pin(item.get("tls_fingerprint"), where))
    return peers


def load(settings):
    """Every configured peer, ``{name: Peer}``; reads ``peers_file`` (small, at start/reload)."""
    own = settings.relay.id
    peers = from_sections(settings.named("peer"))
    path = settings.federation.peers_file
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise PeerError(f"[federation] peers_file: cannot read {path}: {e}") from None
        for name, peer in parse_relays_json(text, path, own).items():
            if name in peers:
                raise PeerError(f"{path}: relay {name!r} is also a [peer:{name}] section")
            peers[name] = peer
    peers.pop(own, None)
    for peer in peers.values():
        if onion_target(peer.endpoint) is not None and not settings.federation.tor_socks:
            raise PeerError(f"peer {peer.name}: {peer.endpoint} is a .onion address; "
                            f"set [federation] tor_socks to Tor's SOCKS port")
    return peers


def onion_target(endpoint):
    """``(host, port)`` when ``endpoint`` is ``tcp:``/``tor:`` to a .onion, else None."""
    parts = re.split(r"(?<!\\):", endpoint)
    if len(parts) >= 3 and parts[0] in ("tcp", "tor") and parts[1].endswith(".onion"):
        return parts[1], int(parts[2])
    return None


def client_endpoint(reactor, endpoint, tor_socks=None):
    """The endpoint to dial: through Tor's SOCKS port (txtorcon) for ``.onion`` hosts."""
    onion = onion_target(endpoint)
    if onion is None:
        return endpoints.clientFromString(reactor, endpoint)
    if not tor_socks:
        raise PeerError(f"{endpoint}: reaching a .onion peer needs [federation] tor_socks")
    import txtorcon
    return txtorcon.TorClientEndpoint(
        onion[0], onion[1], socks_endpoint=endpoints.clientFromString(reactor, tor_socks),
        reactor=reactor)
