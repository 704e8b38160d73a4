"""A private certificate authority for small deployments (``relayd ca``/``relayd cert``).

``init_ca`` creates ``ca.pem`` and ``ca.key`` in a directory; ``issue`` signs
a relay (server) or client certificate with that CA and writes
``NAME.pem``/``NAME.key``.  Keys are ECDSA P-256, written with mode 0600.
"""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class CAError(Exception):
    """A CA operation could not be done; the message says why."""


def _write(path, data, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_pair(directory, stem, cert, key):
    """Write both files, or neither when one of them exists."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path = os.path.join(directory, stem + ".pem")
    key_path = os.path.join(directory, stem + ".key")
    for path in (key_path, cert_path):
        if os.path.exists(path):
            raise CAError(f"{path} already exists; not overwriting it")
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _builder(subject, issuer, public_key, days):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def init_ca(directory, name="relayd private CA", days=3650):
    """Create a self-signed CA in ``directory``; returns (cert_path, key_path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    cert = (_builder(subject, subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _write_pair(directory, "ca", cert, key)


def load_ca(directory):
    """(certificate, private key) of the CA in ``directory``."""
    try:
        with open(os.path.join(directory, CA_CERT), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(directory, CA_KEY), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError as e:
        raise CAError(f"no CA in {directory} ({e.filename} is missing); "
                      f"create one with: relayd ca init --dir {directory}") from None
    return cert, key


def _san(hosts):
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(ca_dir, name, out_dir=None, hosts=None, client=False, days=825):
    """Sign a certificate called ``name``; returns (cert_path, key_path).

    A relay certificate (``client=False``) is valid for ``hosts`` (names or
    IP addresses, default localhost and the loopback addresses) and may be
    used on both ends of a federation link; a client certificate only
    authenticates a client.
    """
    if not name or "/" in name or name.startswith("."):
        raise CAError(f"{name!r} is not a usable certificate name")
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if not client:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (_builder(_name(name), ca_cert.subject, key.public_key(), days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if not client:
        builder = builder.add_extension(_san(hosts or DEFAULT_HOSTS), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_pair(out_dir or ca_dir, name, cert, key)
