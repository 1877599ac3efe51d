"""Test PKI for the integration suite: a trusted root with an intermediate,
leaves that each fail exactly one step of stubborn's trust gate, and an
untrusted root.  Everything is ECDSA P-256 and generated fresh per session,
so no key material is ever checked in."""

import base64
import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def spki_pin(cert):
    """RFC 7469 pin-sha256 of a certificate, in stubborn's conf syntax."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def der_sha256(cert):
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stubborn tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _validity():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)


def _ca(cn, issuer_cert=None, issuer_key=None):
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity()
    # A self-signed root signs itself; an intermediate is signed by its parent.
    signer_key = issuer_key or key
    issuer_name = issuer_cert.subject if issuer_cert else _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def _leaf(dns_name, issuer_cert, issuer_key):
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_name))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


@dataclass
class ServerCert:
    """What an upstream serves: its leaf, the chain file (leaf + issuing CA)
    and the private key, plus the facts a test compares incident lines to."""
    name: str
    hostname: str
    leaf: x509.Certificate
    chain_pem: Path
    key_pem: Path

    @property
    def pin(self):
        return spki_pin(self.leaf)

    @property
    def leaf_sha256(self):
        return der_sha256(self.leaf)


@dataclass
class PKI:
    root: x509.Certificate
    root_pem: Path
    intermediate: x509.Certificate
    untrusted_root: x509.Certificate
    untrusted_root_pem: Path
    servers: dict

    def __getitem__(self, name):
        return self.servers[name]


HOSTNAME = "dns.test"

ROOT_CN = "stubborn test root"
INTERMEDIATE_CN = "stubborn test intermediate"
UNTRUSTED_CN = "stubborn untrusted root"


def build(directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    root, root_key = _ca(ROOT_CN)
    inter, inter_key = _ca(INTERMEDIATE_CN, root, root_key)
    untrusted, untrusted_key = _ca(UNTRUSTED_CN)

    root_pem = directory / "root.pem"
    root_pem.write_bytes(_pem(root))
    untrusted_pem = directory / "untrusted-root.pem"
    untrusted_pem.write_bytes(_pem(untrusted))

    def issue(name, dns_name, ca_cert, ca_key):
        cert, key = _leaf(dns_name, ca_cert, ca_key)
        chain = directory / f"{name}.chain.pem"
        # Leaf first, then the CA that signed it: what a real server sends.
        # The untrusted root is self-signed, so its "chain" is leaf + root.
        chain.write_bytes(_pem(cert) + _pem(ca_cert))
        key_file = directory / f"{name}.key"
        key_file.write_bytes(_key_pem(key))
        key_file.chmod(0o600)
        return ServerCert(name, dns_name, cert, chain, key_file)

    servers = {
        "good": issue("good", HOSTNAME, inter, inter_key),
        "rogue": issue("rogue", HOSTNAME, inter, inter_key),
        "wrongname": issue("wrongname", "other.test", inter, inter_key),
        "untrusted": issue("untrusted", HOSTNAME, untrusted, untrusted_key),
    }
    return PKI(root=root, root_pem=root_pem, intermediate=inter,
               untrusted_root=untrusted, untrusted_root_pem=untrusted_pem,
               servers=servers)
