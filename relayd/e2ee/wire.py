"""The byte formats of end-to-end encryption (PROTOCOL.md, "End-to-end encryption").

Everything that is signed or bound as context is a *context string*: a
label, then each part as a 2-byte big-endian length and its bytes, so no
choice of ids can make two different contexts equal.

An encrypted body is text: ``PREFIX + content type + " " + base64(envelope)``,
so relays, federation, journals and mailboxes carry it as any other body.
"""
import base64
import binascii
import hashlib

from relayd.identity import verify

PREFIX = "relayd-e2ee/1 "
DM, ROOM = "dm", "room"             # the two content types
KEY_ID_LEN = 8
SPK_LABEL = b"relayd-e2ee/1 spk"
OPK_LABEL = b"relayd-e2ee/1 opk"
# Plaintexts are padded to the first bucket that holds them, then to a multiple of the last.
BUCKETS = (256, 1024, 4096, 16384)


class BadEnvelope(ValueError):
    """A body or key record that is not well formed (to be refused, never shown)."""


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(text, length=None, what="value"):
    """``text`` decoded from base64; BadEnvelope if it is not, or not ``length`` bytes."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise BadEnvelope(f"{what} is not base64") from None
    if length is not None and len(data) != length:
        raise BadEnvelope(f"{what} must be {length} bytes")
    return data


def context(label, *parts):
    """``label`` then each part (str as UTF-8) with a 2-byte length."""
    out = [label]
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        out.append(len(data).to_bytes(2, "big") + data)
    return b"".join(out)


def key_id(raw):
    """The 8-byte id of a public or room key: the start of its SHA-256."""
    return hashlib.sha256(raw).digest()[:KEY_ID_LEN]


def prekey_text(label, peer_id, raw):
    return context(label, peer_id, raw)


def check_prekey(record, label, peer_id, identity_key):
    """The raw X25519 key of a ``{"key", "sig"}`` record signed by ``identity_key``."""
    if not isinstance(record, dict):
        raise BadEnvelope("a prekey must be an object with key and sig")
    raw = unb64(record.get("key"), 32, "key")
    sig = unb64(record.get("sig"), 64, "sig")
    if not verify(identity_key, sig, prekey_text(label, peer_id, raw)):
        raise BadEnvelope("the prekey signature does not verify with the id's key")
    return raw


def pad(data):
    """``data`` with a 4-byte length, zero-padded to its size bucket."""
    size = len(data) + 4
    for bucket in BUCKETS:
        if size <= bucket:
            break
    else:
        bucket = -(-size // BUCKETS[-1]) * BUCKETS[-1]
    return len(data).to_bytes(4, "big") + data + bytes(bucket - size)


def unpad(data):
    if len(data) < 4:
        raise BadEnvelope("padded plaintext too short")
    n = int.from_bytes(data[:4], "big")
    if n > len(data) - 4 or any(data[4 + n:]):
        raise BadEnvelope("bad padding")
    return data[4:4 + n]


def body(content_type, envelope):
    return PREFIX + content_type + " " + b64(envelope)


def is_encrypted(text):
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_body(text):
    """(content type, envelope bytes) of an encrypted body."""
    if not is_encrypted(text):
        raise BadEnvelope("not an encrypted body")
    kind, _, data = text[len(PREFIX):].partition(" ")
    if kind not in (DM, ROOM):
        raise BadEnvelope(f"unknown content type {kind[:16]!r}")
    return kind, unb64(data, what="envelope")


def prekey_record(identity, label, peer_id, raw):
    """``{"key", "sig"}``: ``raw`` signed by ``identity`` for ``peer_id``."""
    return {"key": b64(raw), "sig": b64(identity.sign(prekey_text(label, peer_id, raw)))}
