"""End-to-end encryption between two relay-chat peers, whatever the path.

Handshake: each side sends ``{"t": "hs", "from", "to", "id", "eph", "sig"}``:
its Ed25519 identity key, a fresh X25519 key, and an Ed25519 signature over
``relayd-p2p-hs1|from|to|eph``.  Both derive two directional ChaCha20-Poly1305
keys with HKDF-SHA256 from the X25519 secret (salt: both X25519 keys, sorted).
Frames are ``{"t": "msg", "from", "n", "c"}``: ``n`` is a per-direction counter
used as the nonce, authenticated with the names as associated data; a
sliding window refuses replays.  The relay sees only these frames.
"""
import base64
import hashlib
import json

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relayd.identity import verify

REPLAY_WINDOW = 1024
MAX_PEER_SESSIONS = 64     # peer ephemeral keys remembered before ours is replaced


class E2EError(ValueError):
    """A frame or handshake that fails verification (to be ignored)."""


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise E2EError("bad base64") from None


def json_object(data):
    """``data`` (bytes or str) as a JSON object, or None for anything else."""
    try:
        obj = json.loads(data)
    except (TypeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def fingerprint(public_bytes):
    return "sha256:" + hashlib.sha256(public_bytes).hexdigest()


def _raw(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hs_text(sender, receiver, eph):
    return b"relayd-p2p-hs1|" + sender.encode() + b"|" + receiver.encode() + b"|" + eph


class ReplayWindow:
    """Accepts each counter once, and none older than the window."""

    def __init__(self, size=REPLAY_WINDOW):
        self.size = size
        self.highest = -1
        self.seen = set()

    def accept(self, n):
        if n <= self.highest - self.size or n in self.seen:
            return False
        self.seen.add(n)
        if n > self.highest:
            self.highest = n
            self.seen = {s for s in self.seen if s > n - self.size}
        return True


class Channel:
    """One peer-to-peer conversation: handshake state and the session keys."""

    def __init__(self, identity, me, peer):
        self.identity = identity
        self.me, self.peer = me, peer
        self._new_ephemeral()
        self.peer_id = None            # the peer's Ed25519 public key, once seen
        self.peer_eph = None
        self._send = self._recv = None
        self._counter = 0
        self._window = None

    def _new_ephemeral(self):
        self._eph = X25519PrivateKey.generate()
        self.eph_public = _raw(self._eph.public_key())
        # The peer ephemeral keys this one has made sessions with: keying
        # the same pair again would repeat its keys, nonces and counters.
        self._keyed = set()

    @property
    def established(self):
        return self._send is not None

    def hello(self):
        """Our handshake frame (the same until MAX_PEER_SESSIONS peer sessions)."""
        return {"t": "hs", "from": self.me, "to": self.peer, "id": b64(self.identity.public_bytes),
                "eph": b64(self.eph_public),
                "sig": b64(self.identity.sign(_hs_text(self.me, self.peer, self.eph_public)))}

    def accept_hello(self, frame, expected_id=None):
        """Check the peer's handshake; True when it starts a new session.

        ``expected_id`` (raw public key) pins the peer's identity; a hello
        signed by another key raises E2EError.
        """
        if frame.get("from") != self.peer or frame.get("to") != self.me:
            raise E2EError("handshake for someone else")
        peer_id, eph = unb64(frame.get("id", "")), unb64(frame.get("eph", ""))
        if len(peer_id) != 32 or len(eph) != 32:
            raise E2EError("bad handshake keys")
        if expected_id is not None and peer_id != expected_id:
            raise E2EError(f"identity {fingerprint(peer_id)} is not the expected one")
        if not verify(peer_id, unb64(frame.get("sig", "")), _hs_text(self.peer, self.me, eph)):
            raise E2EError("bad handshake signature")
        if eph == self.peer_eph:
            return False
        if self.peer_id is not None and peer_id != self.peer_id:
            raise E2EError("the peer's identity changed")
        if eph in self._keyed:
            raise E2EError("replayed handshake of an earlier session")
        if len(self._keyed) >= MAX_PEER_SESSIONS:
            self._new_ephemeral()
        self._keyed.add(eph)
        self.peer_id, self.peer_eph = peer_id, eph
        secret = self._eph.exchange(X25519PublicKey.from_public_bytes(eph))
        names = "|".join(sorted((self.me, self.peer))).encode()
        keys = HKDF(algorithm=hashes.SHA256(), length=64, salt=b"".join(sorted((eph, self.eph_public))),
                    info=b"relayd-p2p-v1|" + names).derive(secret)
        first, second = keys[:32], keys[32:]
        mine, theirs = (first, second) if self.me < self.peer else (second, first)
        self._send, self._recv = ChaCha20Poly1305(mine), ChaCha20Poly1305(theirs)
        self._counter = 0
        self._window = ReplayWindow()
        return True

    def _ad(self, sender, receiver, n):
        return f"relayd-p2p-msg1|{sender}|{receiver}|{n}".encode()

    def seal(self, obj):
        """An encrypted frame carrying ``obj`` (a JSON-able dict)."""
        n = self._counter
        self._counter += 1
        nonce = b"\0\0\0\0" + n.to_bytes(8, "big")
        ciphertext = self._send.encrypt(nonce, json.dumps(obj).encode(), self._ad(self.me, self.peer, n))
        return {"t": "msg", "from": self.me, "n": n, "c": b64(ciphertext)}

    def open(self, frame):
        """The dict inside an encrypted frame; E2EError if forged or replayed."""
        n = frame.get("n")
        if not self.established or not isinstance(n, int) or not 0 <= n < 2 ** 64:
            raise E2EError("no session or bad counter")
        nonce = b"\0\0\0\0" + n.to_bytes(8, "big")
        try:
            plain = self._recv.decrypt(nonce, unb64(frame.get("c", "")), self._ad(self.peer, self.me, n))
        except InvalidTag:
            raise E2EError("frame does not authenticate") from None
        if not self._window.accept(n):
            raise E2EError("replayed frame")
        obj = json_object(plain)
        if obj is None:
            raise E2EError("the frame does not hold a JSON object")
        return obj
