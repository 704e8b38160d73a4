"""Noise_XX_25519_ChaChaPoly_SHA256 with the libp2p handshake payload.

Written on ``cryptography`` (X25519, ChaCha20-Poly1305) and stdlib hmac,
following the Noise spec rev 34; I/O-free.  Every Noise message travels
behind a 2-byte big-endian length (see ``frame``/``Deframer``).
"""
import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from relayd.libp2p import protobuf
from relayd.libp2p.peerid import PeerId, verify

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
PROTOCOL_ID = "/noise"
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
MAX_MESSAGE = 65535
MAX_PLAINTEXT = MAX_MESSAGE - 16
DHLEN = 32


class HandshakeError(Exception):
    pass


def _raw(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hkdf(chaining_key, ikm):
    temp = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp, b"\x01", "sha256")
    return out1, hmac.digest(temp, out1 + b"\x02", "sha256")


class CipherState:
    """A key and a 64-bit nonce; ``None`` key means pass-through."""

    def __init__(self, key=None):
        self.cipher = ChaCha20Poly1305(key) if key is not None else None
        self.nonce = 0

    def _next_nonce(self):
        if self.nonce >= 2 ** 64 - 1:
            raise HandshakeError("nonce exhausted")
        nonce = b"\0\0\0\0" + struct.pack("<Q", self.nonce)
        self.nonce += 1
        return nonce

    def encrypt(self, ad, plaintext):
        if self.cipher is None:
            return plaintext
        return self.cipher.encrypt(self._next_nonce(), plaintext, ad)

    def decrypt(self, ad, ciphertext):
        if self.cipher is None:
            return ciphertext
        try:
            return self.cipher.decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag:
            raise HandshakeError("decryption failed (bad tag)") from None


class SymmetricState:
    def __init__(self):
        self.h = hashlib.sha256(PROTOCOL_NAME).digest() if len(PROTOCOL_NAME) > 32 \
            else PROTOCOL_NAME.ljust(32, b"\0")
        self.ck = self.h
        self.cs = CipherState()
        self.mix_hash(b"")      # the empty prologue

    def mix_hash(self, data):
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, key = _hkdf(self.ck, ikm)
        self.cs = CipherState(key)

    def encrypt_and_hash(self, plaintext):
        ciphertext = self.cs.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext):
        plaintext = self.cs.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self):
        key1, key2 = _hkdf(self.ck, b"")
        return CipherState(key1), CipherState(key2)


def encode_payload(keypair, static_public, muxers=()):
    """NoiseHandshakePayload: identity key, signature over the static key, extensions."""
    signature = keypair.sign(SIGNATURE_PREFIX + static_public)
    extensions = protobuf.encode([(2, list(muxers))]) if muxers else None
    return protobuf.encode([(1, keypair.public_key), (2, signature), (4, extensions)])


def verify_payload(payload, remote_static):
    """``(PeerId, stream muxers)`` proven by ``payload`` for ``remote_static``;
    HandshakeError otherwise."""
    try:
        fields = protobuf.decode(payload)
        identity_key = protobuf.first_bytes(fields, 1)
        signature = protobuf.first_bytes(fields, 2)
        extensions = protobuf.decode(protobuf.first_bytes(fields, 4) or b"")
        muxers = [m.decode("utf-8") for m in extensions.get(2, []) if isinstance(m, bytes)]
    except (ValueError, UnicodeDecodeError) as e:
        raise HandshakeError(f"malformed handshake payload: {e}") from None
    if not identity_key or not signature:
        raise HandshakeError("handshake payload lacks identity key or signature")
    if not verify(identity_key, signature, SIGNATURE_PREFIX + remote_static):
        raise HandshakeError("identity signature over the static key does not verify")
    return PeerId.from_public_key(identity_key), muxers


class Handshake:
    """The XX pattern for one side.

    The initiator calls ``write_message()`` (msg 1), ``read_message()`` (msg 2),
    ``write_message()`` (msg 3); the responder reads, writes, reads.  When
    ``complete``, ``remote_peer`` is the verified PeerId, ``remote_muxers`` the
    stream muxers its payload offered, and ``send``/``recv`` the transport
    CipherStates.
    """

    def __init__(self, keypair, initiator, muxers=()):
        self.keypair = keypair
        self.initiator = initiator
        self.muxers = muxers            # offered in our payload (inlined muxer negotiation)
        self.remote_muxers = []
        self.ss = SymmetricState()
        self.s = X25519PrivateKey.generate()
        self.e = None
        self.re = self.rs = None
        self.step = 0
        self.remote_peer = None
        self.send = self.recv = None

    @property
    def complete(self):
        return self.step == 3

    @property
    def our_turn(self):
        return (self.step % 2 == 0) == self.initiator

    def _dh(self, private, public_raw):
        return private.exchange(X25519PublicKey.from_public_bytes(public_raw))

    def write_message(self):
        if self.complete or not self.our_turn:
            raise HandshakeError("not our turn to write")
        ss = self.ss
        out = b""
        if self.step in (0, 1):
            self.e = X25519PrivateKey.generate()
            e_pub = _raw(self.e.public_key())
            ss.mix_hash(e_pub)
            out += e_pub
        if self.step == 0:
            out += ss.encrypt_and_hash(b"")
        else:
            if self.step == 1:
                ss.mix_key(self._dh(self.e, self.re))                       # ee
            s_pub = _raw(self.s.public_key())
            out += ss.encrypt_and_hash(s_pub)
            ss.mix_key(self._dh(self.s, self.re))                           # es (resp) / se (init)
            out += ss.encrypt_and_hash(encode_payload(self.keypair, s_pub, self.muxers))
        self._advance()
        return out

    def read_message(self, message):
        if self.complete or self.our_turn:
            raise HandshakeError("not our turn to read")
        ss = self.ss
        if self.step in (0, 1):
            if len(message) < DHLEN:
                raise HandshakeError("handshake message too short")
            self.re, message = message[:DHLEN], message[DHLEN:]
            ss.mix_hash(self.re)
        if self.step == 0:
            ss.decrypt_and_hash(message)
        else:
            if self.step == 1:
                ss.mix_key(self._dh(self.e, self.re))                       # ee
            if len(message) < DHLEN + 16:
                raise HandshakeError("handshake message too short")
            self.rs = ss.decrypt_and_hash(message[:DHLEN + 16])
            ss.mix_key(self._dh(self.e, self.rs))                           # es (init) / se (resp)
            payload = ss.decrypt_and_hash(message[DHLEN + 16:])
            self.remote_peer, self.remote_muxers = verify_payload(payload, self.rs)
        self._advance()

    def _advance(self):
        self.step += 1
        if self.complete:
            first, second = self.ss.split()
            self.send, self.recv = (first, second) if self.initiator else (second, first)


def frame(message):
    if len(message) > MAX_MESSAGE:
        raise ValueError("noise message too long")
    return struct.pack(">H", len(message)) + message


def encrypt_frames(cipher, plaintext):
    """Transport frames for ``plaintext``, split at MAX_PLAINTEXT."""
    return b"".join(frame(cipher.encrypt(b"", plaintext[i:i + MAX_PLAINTEXT]))
                    for i in range(0, len(plaintext), MAX_PLAINTEXT))


class Deframer:
    """Collects bytes and yields complete length-prefixed Noise messages."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            length = int.from_bytes(self._buf[:2], "big")
            if len(self._buf) < 2 + length:
                break
            out.append(bytes(self._buf[2:2 + length]))
            del self._buf[:2 + length]
        return out
