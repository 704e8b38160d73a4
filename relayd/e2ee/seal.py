"""Sealing and opening end-to-end encrypted bodies.

Direct messages: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, ChaCha20-Poly1305, as the ``cryptography`` library implements
it, to the recipient's one-time prekey (or its signed prekey when none is
left).  Room messages: ChaCha20-Poly1305 under the room key of an epoch.

Inside either, the padded plaintext is the sender's Ed25519 signature (64
bytes) then a JSON object, the *content*, which names the sender's key
(``ik``), a random message id (``mid``) and the time (``ts``).  The
signature covers the content, the sender and recipient ids and what the
message was sealed to (the prekey, or the room key id), so it cannot be
re-sent under another name or to another recipient.
"""
import json
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from relayd.e2ee import wire
from relayd.e2ee.wire import BadEnvelope
from relayd.identity import verify

VERSION = 1
SPK, OPK = 0, 1                 # which prekey a direct message was sealed to
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
DM_LABEL = b"relayd-e2ee/1 dm"
DM_SIG = b"relayd-e2ee/1 dm-sig"
ROOM_LABEL = b"relayd-e2ee/1 room"
ROOM_SIG = b"relayd-e2ee/1 room-sig"
_DM_HEAD = struct.Struct(">BB8s")          # version, SPK/OPK, prekey id
_ROOM_HEAD = struct.Struct(">BI8s12s")     # version, epoch, room key id, nonce
MAX_CONTENT = 1 << 20


def _signed(identity, sig_label, sender, to, binding, content):
    content = dict(content, ik=identity.public_b64)
    data = json.dumps(content, separators=(",", ":"), sort_keys=True).encode()
    sig = identity.sign(wire.context(sig_label, sender, to, binding, data))
    return wire.pad(sig + data)


def _verified(padded, sig_label, sender, to, binding):
    inner = wire.unpad(padded)
    sig, data = inner[:64], inner[64:]
    try:
        content = json.loads(data)
    except (ValueError, RecursionError):
        raise BadEnvelope("the content is not JSON") from None
    if not isinstance(content, dict) or not isinstance(content.get("mid"), str):
        raise BadEnvelope("the content is not a message object")
    ik = wire.unb64(content.get("ik"), 32, "ik")
    if not verify(ik, sig, wire.context(sig_label, sender, to, binding, data)):
        raise BadEnvelope("the sender's signature does not verify")
    content["ik"] = ik
    return content


def seal_dm(identity, sender, recipient, prekey, which, content):
    """The body of a direct message to ``recipient``, sealed to ``prekey`` (raw X25519)."""
    head = _DM_HEAD.pack(VERSION, which, wire.key_id(prekey))
    plain = _signed(identity, DM_SIG, sender, recipient, prekey, content)
    sealed = SUITE.encrypt(plain, X25519PublicKey.from_public_bytes(prekey),
                           info=wire.context(DM_LABEL, sender, recipient, head))
    return wire.body(wire.DM, head + sealed)


def dm_key(envelope):
    """(SPK or OPK, prekey id) a direct message envelope was sealed to."""
    if len(envelope) < _DM_HEAD.size + 32 + 16:
        raise BadEnvelope("direct message envelope too short")
    version, which, kid = _DM_HEAD.unpack_from(envelope)
    if version != VERSION or which not in (SPK, OPK):
        raise BadEnvelope("unknown envelope version or prekey kind")
    return which, kid


def open_dm(envelope, sender, recipient, private_key):
    """The verified content of a direct message; BadEnvelope if anything is off."""
    head = envelope[:_DM_HEAD.size]
    try:
        plain = SUITE.decrypt(envelope[_DM_HEAD.size:], private_key,
                              info=wire.context(DM_LABEL, sender, recipient, head))
    except (InvalidTag, ValueError):
        raise BadEnvelope("the message does not decrypt (tampered, or not for this key)") from None
    public = private_key.public_key().public_bytes_raw()
    return _verified(plain, DM_SIG, sender, recipient, public)


def seal_room(identity, sender, room, epoch, key, content):
    """The body of a message to ``#room`` under the epoch's 32-byte ``key``."""
    kid = wire.key_id(key)
    head = _ROOM_HEAD.pack(VERSION, epoch, kid, os.urandom(12))
    plain = _signed(identity, ROOM_SIG, sender, "#" + room, kid, content)
    sealed = ChaCha20Poly1305(key).encrypt(head[-12:], plain,
                                           wire.context(ROOM_LABEL, room, sender, head))
    return wire.body(wire.ROOM, head + sealed)


def room_epoch(envelope):
    """(epoch, room key id) of a room envelope."""
    if len(envelope) < _ROOM_HEAD.size + 16:
        raise BadEnvelope("room envelope too short")
    version, epoch, kid, _ = _ROOM_HEAD.unpack_from(envelope)
    if version != VERSION:
        raise BadEnvelope("unknown envelope version")
    return epoch, kid


def open_room(envelope, sender, room, key):
    head = envelope[:_ROOM_HEAD.size]
    try:
        plain = ChaCha20Poly1305(key).decrypt(head[-12:], envelope[_ROOM_HEAD.size:],
                                              wire.context(ROOM_LABEL, room, sender, head))
    except InvalidTag:
        raise BadEnvelope("the room message does not decrypt (tampered, or another key)") from None
    return _verified(plain, ROOM_SIG, sender, "#" + room, wire.key_id(key))
