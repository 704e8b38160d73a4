"""Stateless tokens bound to the sender's address: name challenges and address cookies.

The server hands out ``challenge`` = ``<window>.<hex HMAC(secret, window|address|name)>``
in ``register_ack`` (or in a ``name_taken`` error); the client signs
``relayd-udp-register:<name>:<challenge>`` with its key.  A ``cookie`` is
the same without a name; echoing one proves the sender receives at its
address.  Both are good for the minute they were made in and the next,
and only from that address.
"""
import base64
import binascii
import hashlib
import hmac
import os

from relayd.identity import verify
from relayd.udp.packets import format_address

WINDOW = 60.0


class BadKey(ValueError):
    """``key`` is not a base64 raw Ed25519 public key."""


def signed_text(name, challenge):
    return f"relayd-udp-register:{name}:{challenge}".encode("utf-8")


def decode_key(text):
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise BadKey(text) from None
    if len(raw) != 32:
        raise BadKey(text)
    return raw


class Challenger:
    def __init__(self, secret=None):
        self._secret = secret or os.urandom(32)

    def _mac(self, purpose, window, address, name):
        message = f"{purpose}|{window}|{format_address(address)}|{name}".encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _token(self, purpose, address, name, now):
        window = int(now // WINDOW)
        return f"{window}.{self._mac(purpose, window, address, name)}"

    def _valid(self, purpose, address, name, now, token):
        if not isinstance(token, str):
            return False
        window_text, _, mac = token.partition(".")
        current = int(now // WINDOW)
        windows = {str(w): w for w in (current, current - 1)}
        if window_text not in windows:
            return False
        expected = self._mac(purpose, windows[window_text], address, name)
        return mac.isascii() and hmac.compare_digest(mac, expected)

    def challenge(self, address, name, now):
        return self._token("challenge", address, name, now)

    def cookie(self, address, now):
        return self._token("cookie", address, "", now)

    def check_cookie(self, address, now, cookie):
        """True when ``cookie`` was made for ``address`` this minute or the last."""
        return self._valid("cookie", address, "", now, cookie)

    def check(self, address, name, now, challenge, key, signature_b64):
        """True when ``signature_b64`` proves ``key`` for this challenge, name and address."""
        if not isinstance(signature_b64, str):
            return False
        if not self._valid("challenge", address, name, now, challenge):
            return False
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            return False
        return verify(key, signature, signed_text(name, challenge))
