"""libp2p keys and peer ids.  relayd signs with Ed25519; it verifies every
key type of the spec (Ed25519, RSA, Secp256k1, ECDSA), so peers with any of them
can connect.

A PeerId is the multihash of the protobuf ``PublicKey``: the identity
multihash ``00 24 <08 01 12 20 key>`` for Ed25519, or sha2-256 for keys
longer than 42 bytes.  Its text form is base58btc (``12D3KooW...``); the CIDv1
form (``bafz...``, codec libp2p-key) is accepted as input.
"""
import base64
import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relayd.libp2p import protobuf, varint

RSA, ED25519, SECP256K1, ECDSA = 0, 1, 2, 3
IDENTITY, SHA2_256 = 0x00, 0x12
LIBP2P_KEY = 0x72
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data):
    num = int.from_bytes(data, "big")
    out = ""
    while num:
        num, rem = divmod(num, 58)
        out = _B58[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b58decode(text):
    num = 0
    for char in text:
        index = _B58.find(char)
        if index < 0:
            raise ValueError(f"{char!r} is not a base58btc character")
        num = num * 58 + index
    body = num.to_bytes((num.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def encode_public_key(raw, key_type=ED25519):
    """The deterministic ``PublicKey`` protobuf (type 1, data 2)."""
    return protobuf.encode([(1, key_type), (2, raw)])


def decode_public_key(data):
    """``(key_type, raw)`` from a ``PublicKey`` protobuf."""
    fields = protobuf.decode(data)
    key_type = protobuf.first_int(fields, 1)
    raw = protobuf.first_bytes(fields, 2)
    if key_type is None or raw is None:
        raise ValueError("PublicKey lacks Type or Data")
    return key_type, raw


def _load_key(key_type, raw):
    if key_type == ED25519:
        return Ed25519PublicKey.from_public_bytes(raw)
    if key_type == SECP256K1:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
    if key_type in (RSA, ECDSA):
        key = serialization.load_der_public_key(raw)        # PKIX SubjectPublicKeyInfo
        if isinstance(key, rsa.RSAPublicKey if key_type == RSA else ec.EllipticCurvePublicKey):
            return key
    raise ValueError(f"unsupported key type {key_type}")


def verify(public_key_proto, signature, data):
    """Check ``signature`` of ``data`` by a ``PublicKey`` protobuf, per the peer-ids spec:
    Ed25519 (RFC 8032), RSA (PKCS#1 v1.5, SHA-256), Secp256k1 and ECDSA (DER, SHA-256)."""
    try:
        key_type, raw = decode_public_key(public_key_proto)
        key = _load_key(key_type, raw)
        if key_type == ED25519:
            key.verify(signature, data)
        elif key_type == RSA:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except Exception:
        return False
    return True


class PeerId:
    """A peer id: ``bytes`` is the multihash, ``str()`` the base58btc text."""

    __slots__ = ("bytes",)

    def __init__(self, multihash):
        code, pos = varint.decode(multihash)
        length, pos = varint.decode(multihash, pos)
        if code not in (IDENTITY, SHA2_256) or len(multihash) != pos + length:
            raise ValueError("not an identity or sha2-256 multihash")
        if code == SHA2_256 and length != 32:
            raise ValueError("sha2-256 multihash must be 32 bytes")
        self.bytes = bytes(multihash)

    @classmethod
    def from_public_key(cls, public_key_proto):
        if len(public_key_proto) <= 42:
            return cls(varint.encode(IDENTITY) + varint.prefixed(public_key_proto))
        return cls(bytes([SHA2_256, 32]) + hashlib.sha256(public_key_proto).digest())

    @classmethod
    def from_string(cls, text):
        """Parse base58btc (``12D3KooW...``, ``Qm...``) or a CIDv1 in base32 (``b...``)."""
        try:
            if text.startswith("b"):
                raw = base64.b32decode(text[1:].upper() + "=" * (-len(text[1:]) % 8))
                version, pos = varint.decode(raw)
                codec, pos = varint.decode(raw, pos)
                if version != 1 or codec != LIBP2P_KEY:
                    raise ValueError("CID is not a v1 libp2p-key")
                return cls(raw[pos:])
            return cls(b58decode(text))
        except Exception as e:
            raise ValueError(f"{text!r} is not a peer id: {e}") from None

    def public_key(self):
        """The embedded ``PublicKey`` protobuf for identity multihashes, else None."""
        return self.bytes[2:] if self.bytes[0] == IDENTITY else None

    def __str__(self):
        return b58encode(self.bytes)

    def __repr__(self):
        return f"PeerId({self})"

    def __eq__(self, other):
        return isinstance(other, PeerId) and other.bytes == self.bytes

    def __hash__(self):
        return hash(self.bytes)


class KeyPair:
    """An Ed25519 private key seen as a libp2p identity."""

    def __init__(self, private_key):
        self.private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = encode_public_key(raw)
        self.peer_id = PeerId.from_public_key(self.public_key)

    def sign(self, data):
        return self.private_key.sign(data)
