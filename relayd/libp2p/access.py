"""Allow- and deny-lists of peer ids for reservations and circuits
(``[libp2p] allow_peers_file``, ``deny_peers_file``; re-read on reload).

A list file holds one peer id per line (base58 ``12D3KooW...``/``Qm...`` or a
CIDv1); blank lines and ``#`` comments are ignored.
"""
from relayd.libp2p.peerid import PeerId


def parse(text, key):
    """The peer ids in a list file's ``text``; ValueError naming ``[libp2p] key`` and the line."""
    peers = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            peers.add(PeerId.from_string(line))
        except ValueError as e:
            raise ValueError(f"[libp2p] {key}: line {number}: {line[:80]!r} is not a peer id ({e})")
    return frozenset(peers)


class PeerAccess:
    """Who may reserve and take part in circuits: everyone but the denied,
    and, when an allow-list is given, only those on it."""

    def __init__(self, allow=None, deny=frozenset()):
        self.allow = allow
        self.deny = deny

    def refusal(self, peer):
        """None when ``peer`` may use the relay, else ``"denied"`` or ``"not-allowed"``."""
        if peer in self.deny:
            return "denied"
        if self.allow is not None and peer not in self.allow:
            return "not-allowed"
        return None


def load(settings):
    """Read the lists named by ``settings`` (blocking: start-up or the file pool)."""
    lists = {}
    for key in ("allow_peers_file", "deny_peers_file"):
        path = getattr(settings, key)
        if path is None:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                lists[key] = parse(f.read(), key)
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"[libp2p] {key}: cannot read {path} ({e})") from None
    return PeerAccess(lists.get("allow_peers_file"), lists.get("deny_peers_file", frozenset()))
