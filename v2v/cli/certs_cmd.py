"""`v2v certs DIR`: a private CA and the server and client certificates for mutual TLS.

    v2v certs /etc/v2v/tls --host worker1.example.com --host 10.0.0.5

writes DIR/ca.pem, ca.key (made once, then reused: certificates made later with the same DIR trust
each other), server.pem/.key (valid for localhost, 127.0.0.1, ::1 and every --host) and
client.pem/.key. Keys are 0600 in a 0700 directory. Copy ca.pem with the server files to the
hosts that serve, and ca.pem with the client files to the callers; ca.key stays where certs are made.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from v2v.tls import CA_FILE

CA_KEY_FILE = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "v2v"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int) -> \
        x509.CertificateBuilder:
    # Valid from a minute ago: a peer whose clock is a little behind still accepts it.
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days)))


def load_or_make_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = directory / CA_KEY_FILE, directory / CA_FILE
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SystemExit(f"v2v certs: {key_path}: not an EC key made by v2v certs")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name("v2v CA"), _name("v2v CA"), key, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return key, cert


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(directory: Path, role: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
          hosts: Sequence[str], days: int) -> None:
    """Writes DIR/ROLE.pem and DIR/ROLE.key, signed by the CA; a server's names are its SANs."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(_name(f"v2v {role}"), ca_cert.subject, key, days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    _write_key(directory / f"{role}.key", key)
    _write_cert(directory / f"{role}.pem", builder.sign(ca_key, hashes.SHA256()))


def certs_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="v2v certs", description="Make a CA (once) and server and client "
                                "certificates for mutual TLS between v2v services (--tls-dir DIR).")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--host", action="append", default=[], metavar="NAME|ADDRESS",
                   help="a name or IP address clients reach the servers by (repeat; always: "
                        f"{', '.join(DEFAULT_HOSTS)})")
    p.add_argument("--days", type=int, default=825, help="validity of the server and client certificates")
    a = p.parse_args(argv)
    directory: Path = a.dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = load_or_make_ca(directory)
    hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *a.host]))
    issue(directory, "server", ca, hosts, a.days)
    issue(directory, "client", ca, [], a.days)
    print(f"v2v certs: {directory}: {CA_FILE}, server.pem/.key ({', '.join(hosts)}), client.pem/.key",
          file=sys.stderr)
    return 0
