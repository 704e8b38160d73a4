"""TLS for the daemon's listeners: reloadable server certificates.

``ServerTLS`` is the ``[tls]`` service.  It hands every new TLS connection a
context built from the current certificate, key and (optional) client CA, so
a reload (SIGHUP, the admin ``reload()``, or every ``reload_interval``)
changes what new connections see without touching open ones.  A reload that
fails (missing file, key that does not match) is logged and the previous
certificate stays in use.  ``relayd.listeners.stream_service`` wraps the
listeners named in ``[tls] listeners`` with it.
"""
import collections

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer


class TLSConfigError(Exception):
    """Certificate material that cannot be used; the message names the key."""


def _certificates(pem, what):
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TLSConfigError(f"{what}: no PEM certificate ({e})") from None


def _alpn(connection, offered):
    """Twisted's own ALPN callback answers an empty protocol when nothing
    matches, which OpenSSL turns into an "internal error" alert: every browser
    (and curl) failed the handshake.  Pick HTTP/1.1 for WebSocket clients and
    otherwise carry on without ALPN."""
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


class Material:
    """Parsed certificate material plus the context options built from it."""

    def __init__(self, cert_pem, key_pem, client_ca_pem=None, require_client_cert=False):
        chain = _certificates(cert_pem, "[tls] cert")
        try:
            key = load_pem_private_key(key_pem, None)
        except (ValueError, TypeError) as e:
            raise TLSConfigError(f"[tls] key: not a PEM private key ({e})") from None
        if require_client_cert and client_ca_pem is None:
            raise TLSConfigError("[tls] require_client_cert needs [tls] client_ca")
        verify = client_ca_pem is not None
        self.options = ssl.CertificateOptions(
            privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
            verify=verify,
            caCerts=[crypto.X509.from_cryptography(c)
                     for c in _certificates(client_ca_pem, "[tls] client_ca")] if verify else None,
            requireCertificate=require_client_cert,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        try:
            self.options.getContext().set_alpn_select_callback(_alpn)
        except SSL.Error as e:
            raise TLSConfigError(f"[tls] key does not match [tls] cert ({e})") from None
        except TypeError as e:      # pyOpenSSL's refusal of a key type (e.g. X25519)
            raise TLSConfigError(f"[tls] key: cannot sign for TLS ({e})") from None
        leaf = chain[0]
        self.require_client_cert = require_client_cert
        self.source = (cert_pem, key_pem, client_ca_pem)
        self.subject = leaf.subject.rfc4514_string()
        self.not_after = leaf.not_valid_after_utc
        self.fingerprint = "sha256:" + leaf.fingerprint(hashes.SHA256()).hex()
        self.client_certs = ("required" if require_client_cert
                             else "verified if sent" if verify else "not asked")


def read_material(settings):
    """Read the files named by a ``[tls]`` section (blocking: run on the file pool)."""
    def read(key):
        filename = getattr(settings, key)
        if filename is None:
            return None
        try:
            with open(filename, "rb") as f:
                return f.read()
        except OSError as e:
            raise TLSConfigError(f"[tls] {key}: cannot read {filename}: {e.strerror}") from None
    return read("cert"), read("key"), read("client_ca")


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS(MultiService):
    """The ``[tls]`` service: the current server context for every TLS listener."""

    log = Logger()

    def __init__(self, settings, reactor, file_pool):
        super().__init__()
        self.setName("tls")
        self.settings = settings
        self.reactor = reactor
        self.file_pool = file_pool
        self.material = None
        self.reloads = 0
        self.listeners = []  # endpoint strings served with TLS (filled by stream_service)
        self.handshake_failures = collections.Counter()     # listener section -> count
        if settings.reload_interval > 0:
            timer = TimerService(settings.reload_interval, self.reload)
            timer.clock = reactor
            timer.setServiceParent(self)

    def _build(self, source):
        return Material(*source, require_client_cert=self.settings.require_client_cert)

    def privilegedStartService(self):
        """Load the certificate before any listener starts (failing loudly)."""
        self._load_once()
        super().privilegedStartService()

    def startService(self):
        self._load_once()
        if not self.listeners:
            self.log.warn("[tls] listeners = {names}: no listener of this daemon uses TLS",
                          names=" ".join(self.settings.listeners))
        super().startService()

    def _load_once(self):
        if self.material is not None:
            return
        self.material = self._build(read_material(self.settings))
        self.log.info("TLS certificate {subject} ({fingerprint}), client certificates "
                      "{client_certs}", subject=self.material.subject,
                      fingerprint=self.material.fingerprint,
                      client_certs=self.material.client_certs)

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.material.options.getContext(), None)

    def apply_settings(self, settings):
        """Reload hook: take the new ``[tls]`` paths (if any) and reload."""
        if settings.get("tls") is not None:
            self.settings = settings.tls
        self.reload()

    def reload(self):
        """Re-read the files; a Deferred firing with a one-line summary."""
        d = self.file_pool.run(read_material, self.settings)
        d.addCallback(self._install)
        d.addErrback(self._refused)
        return d

    def _install(self, source):
        if self.material is not None and source == self.material.source \
                and self.material.require_client_cert == self.settings.require_client_cert:
            return "TLS certificate unchanged"
        self.material = self._build(source)
        self.reloads += 1
        self.log.info("TLS certificate reloaded: {subject} ({fingerprint}), client certificates "
                      "{client_certs}", subject=self.material.subject,
                      fingerprint=self.material.fingerprint,
                      client_certs=self.material.client_certs)
        return f"TLS certificate reloaded: {self.material.subject}"

    def _refused(self, failure):
        failure.trap(TLSConfigError)
        self.log.error("TLS reload refused, keeping the previous certificate: {why}",
                       why=failure.getErrorMessage())
        return f"TLS reload refused: {failure.getErrorMessage()}"

    def stats(self):
        if self.material is None:
            return {"loaded": False}
        return {"loaded": True, "subject": self.material.subject,
                "fingerprint": self.material.fingerprint,
                "not_after": self.material.not_after.isoformat(),
                "client_certs": self.material.client_certs, "reloads": self.reloads,
                "listeners": self.listeners}

    def health(self):
        if self.material is None:
            return "no certificate loaded"
        if self.material.not_after.timestamp() < self.reactor.seconds():
            return f"certificate expired at {self.material.not_after.isoformat()}"
        return None

