"""libp2p's TLS certificate for QUIC: the public-key extension proves the peer id."""
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial import unittest

from relayd.libp2p import quic
from relayd.libp2p.peerid import KeyPair


class CertificateTests(unittest.TestCase):
    def test_the_extension_proves_the_peer_id(self):
        keys = KeyPair(Ed25519PrivateKey.generate())
        cert, key = quic.certificate(keys)
        self.assertEqual(quic.peer_of(cert), keys.peer_id)
        self.assertEqual(cert.public_key().public_numbers(), key.public_key().public_numbers())

    def test_a_certificate_without_a_valid_extension_proves_nothing(self):
        keys = KeyPair(Ed25519PrivateKey.generate())
        cert, _ = quic.certificate(keys)
        other_key = ec.generate_private_key(ec.SECP256R1())
        # the same extension on another key: the signature covers the certificate's key
        moved = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                 .public_key(other_key.public_key()).serial_number(1)
                 .not_valid_before(cert.not_valid_before_utc)
                 .not_valid_after(cert.not_valid_after_utc)
                 .add_extension(cert.extensions.get_extension_for_oid(quic.EXTENSION_OID).value,
                                critical=False)
                 .sign(other_key, hashes.SHA256()))
        self.assertRaises(ValueError, quic.peer_of, moved)
        plain = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                 .public_key(other_key.public_key()).serial_number(1)
                 .not_valid_before(cert.not_valid_before_utc)
                 .not_valid_after(cert.not_valid_after_utc).sign(other_key, hashes.SHA256()))
        e = self.assertRaises(ValueError, quic.peer_of, plain)
        self.assertIn("without the libp2p extension", str(e))
