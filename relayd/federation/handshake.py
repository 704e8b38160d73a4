"""The link handshake: each side proves its relay key over both nonces.

Both sides send ``hello`` (relay id, public key, fresh nonce) at once.
Each then signs the transcript ``relayd-federation/1|<signer id>|<other
id>|<signer nonce>|<other nonce>`` and sends it in ``auth``.  A relay
accepts the other side only if its key has the fingerprint configured for
that relay id and the signature verifies, so neither a replayed ``auth``
nor a relay without the key can join.
"""
import base64
import binascii
import os

from relayd.identity import verify
from relayd.names import shown

PROTOCOL = "relayd-federation/1"
# Optional extensions, listed in ``hello``; one is used on a link only when
# both sides list it (a relay that lists none speaks the protocol as it was).
FEATURES = ("have-ranges",)


class HandshakeError(Exception):
    """The other side failed to authenticate; the message says why."""


def transcript(signer, other, signer_nonce, other_nonce):
    return "|".join((PROTOCOL, signer, other, signer_nonce, other_nonce)).encode()


class Handshake:
    """One side of the handshake for ``identity`` (relayd.identity.Identity)."""

    def __init__(self, identity, nonce=None):
        self.identity = identity
        self.nonce = nonce or os.urandom(16).hex()
        self.peer_id = None
        self.peer_key = None
        self.peer_nonce = None
        self.peer_features = frozenset()

    def hello(self):
        return {"type": "hello", "proto": PROTOCOL, "relay": self.identity.relay_id,
                "key": self.identity.public_b64, "nonce": self.nonce, "features": list(FEATURES)}

    def receive_hello(self, frame, find_peer):
        """Check the other side's hello; ``find_peer(relay_id)`` -> Peer or None.

        Returns (Peer, auth frame to send).
        """
        if frame.get("proto") != PROTOCOL:
            raise HandshakeError(f"unsupported protocol '{shown(frame.get('proto'), 64)}'")
        relay_id, key, nonce = frame.get("relay"), frame.get("key"), frame.get("nonce")
        if not all(isinstance(v, str) and v for v in (relay_id, key, nonce)) or len(nonce) > 128:
            raise HandshakeError("hello needs relay, key and nonce strings")
        if relay_id == self.identity.relay_id:
            raise HandshakeError("the other side has this relay's own id")
        peer = find_peer(relay_id)
        if peer is None:
            raise HandshakeError(f"relay '{shown(relay_id, 64)}' is not a configured peer")
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise HandshakeError("key is not base64") from None
        if not peer.accepts(raw):
            raise HandshakeError(f"relay {relay_id!r} presented a key that is not the configured one")
        self.peer_id, self.peer_key, self.peer_nonce = relay_id, raw, nonce
        features = frame.get("features")
        if isinstance(features, list):
            self.peer_features = frozenset(f for f in features[:32] if f in FEATURES)
        signature = self.identity.sign(transcript(self.identity.relay_id, relay_id,
                                                  self.nonce, nonce))
        return peer, {"type": "auth", "sig": base64.b64encode(signature).decode("ascii")}

    def receive_auth(self, frame):
        """Verify the other side's signature; raises HandshakeError."""
        try:
            signature = base64.b64decode(frame.get("sig") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise HandshakeError("sig is not base64") from None
        data = transcript(self.peer_id, self.identity.relay_id, self.peer_nonce, self.nonce)
        if not verify(self.peer_key, signature, data):
            raise HandshakeError(f"relay {self.peer_id!r} failed to sign the handshake")
