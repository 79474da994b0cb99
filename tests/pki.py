"""Certificates for the etcd tests, made with `cryptography`: a CA, server certificates that
name their IP addresses, and client certificates; short-lived and written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Authority:
    """A CA that signs server and client certificates into `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder, self.name = folder, name
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        cert = self._builder(self._subject, self._key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
        self.cert = folder / f"{name}-ca.pem"
        self.cert.write_bytes(_pem(cert.sign(self._key, _sha256())))

    def server(self, name: str, addresses: list[str]) -> Pair:
        """A certificate for both sides of TLS (etcd members use it as server and as peer
        client), naming `addresses` (IPs) and localhost."""
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        names = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        names += [x509.DNSName("localhost")]
        return self._issue(name, [x509.SubjectAlternativeName(names), x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])])

    def client(self, name: str, common_name: bool = False) -> Pair:
        """A client certificate; without a Common Name (organisation `name`) unless asked:
        etcd's HTTP gateway refuses one with a CN when users are on."""
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        return self._issue(name, [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
                           common_name)

    def _issue(self, name: str, extensions, common_name: bool = True) -> Pair:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        attribute = NameOID.COMMON_NAME if common_name else NameOID.ORGANIZATION_NAME
        builder = self._builder(x509.Name([x509.NameAttribute(attribute, name)]),
                                key.public_key())
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        pair = Pair(self.folder / f"{self.name}-{name}.pem",
                    self.folder / f"{self.name}-{name}-key.pem")
        pair.cert.write_bytes(_pem(builder.sign(self._key, _sha256())))
        pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        pair.key.chmod(0o600)
        return pair

    def _builder(self, subject, public_key):
        from cryptography import x509

        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self._subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2)))


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()
