"""Test certificates, made at test time (never committed): a CA, certificates it signs for the
adapter, a trusted client and a DCMTK peer, and a second, untrusted CA with a client of its own.

Keys are RSA 2048 in unencrypted PEM (DCMTK reads them with `-pw`, the empty password).
Server certificates name 127.0.0.1 and localhost, so clients that check the host accept them.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def dcmtk_args(self, ca: Path | None = None) -> list[str]:
        """DCMTK options to use this certificate (and trust `ca`): +tls KEY CERT -pw [+cf CA]."""
        return ["+tls", str(self.key), str(self.cert), "-pw", *(["+cf", str(ca)] if ca else [])]


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA everyone trusts
    adapter: CertPair  # server (and client) certificate of the adapter
    client: CertPair  # a modality with a certificate from the CA
    peer: CertPair  # a DCMTK storescp the adapter calls
    rogue_ca: Path  # a CA nobody trusts
    rogue_client: CertPair  # a client certificate signed by the rogue CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _make_ca(folder: Path, name: str) -> tuple[Path, x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    cert = (
        _builder(name, _name(name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write_cert(cert, folder / f"{name}.pem"), cert, key


def _issue(folder: Path, name: str, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> CertPair:
    key = _key()
    cert = (
        _builder(name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertPair(_write_cert(cert, folder / f"{name}.crt"), _write_key(key, folder / f"{name}.key"))


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _make_ca(folder, "test-ca")
    rogue_ca, rogue_cert, rogue_key = _make_ca(folder, "rogue-ca")
    return Pki(
        ca=ca,
        adapter=_issue(folder, "adapter", ca_cert, ca_key),
        client=_issue(folder, "modality", ca_cert, ca_key),
        peer=_issue(folder, "pacs", ca_cert, ca_key),
        rogue_ca=rogue_ca,
        rogue_client=_issue(folder, "rogue", rogue_cert, rogue_key),
    )
