"""The relay's persistent Ed25519 identity, kept in the data directory."""
import base64
import hashlib
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey, Ed25519PublicKey)
from twisted.application.service import Service
from twisted.logger import Logger

from relayd.filepool import write_atomically

KEY_FILE = "identity.key"


class Identity:
    """An Ed25519 key pair with the relay's id."""

    def __init__(self, relay_id, private_key):
        self.relay_id = relay_id
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.public_bytes = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def fingerprint(self):
        """``sha256:<hex>`` of the raw public key."""
        return "sha256:" + hashlib.sha256(self.public_bytes).hexdigest()

    @property
    def public_b64(self):
        return base64.b64encode(self.public_bytes).decode("ascii")

    def sign(self, data):
        return self.private_key.sign(data)


def verify(public_bytes, signature, data):
    """True when ``signature`` is a valid Ed25519 signature of ``data``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_bytes).verify(signature, data)
    except Exception:
        return False
    return True


def load_or_create(path):
    """Load the PEM private key at ``path``, creating it (mode 0600) if absent."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_atomically(path, pem, 0o600)
        return key, True
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key, False


class IdentityService(Service):
    """Loads (or creates on first start) the relay key before anything listens.

    ``identity`` is None until the service has started; services that need it
    start after this one.
    """

    log = Logger()

    def __init__(self, relay_id, data_dir):
        self.relay_id = relay_id
        self.data_dir = data_dir
        self.identity = None

    def privilegedStartService(self):
        self._load()
        super().privilegedStartService()

    def startService(self):
        if self.identity is None:
            self._load()
        super().startService()

    def _load(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.data_dir, KEY_FILE)
        key, created = load_or_create(path)
        self.identity = Identity(self.relay_id, key)
        self.log.info("relay {relay_id} identity {fingerprint} ({how} {path})",
                      relay_id=self.relay_id, fingerprint=self.identity.fingerprint,
                      how="created" if created else "loaded", path=path)
