"""Credentials for a Flower deployment with TLS and SuperNode authentication (flwr 1.42).

:func:`generate_credentials` writes one folder per machine role:

``ca/``
    ``ca.crt`` and ``ca.key``: the certificate authority. Keep ``ca.key`` off the
    devices, because it is needed only to issue more certificates.
``superlink/``
    ``ca.crt``, ``server.crt`` and ``server.key`` for ``flower-superlink
    --ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key``.
``supernode-<i>/``
    ``ca.crt`` for ``flower-supernode --root-certificates``, ``auth.key`` for
    ``--auth-supernode-private-key``, and ``auth.pub`` for ``flwr supernode register``.

Flower 1.42 expects SuperNode authentication keys on a NIST elliptic curve: the
SuperNode loads its private key with ``load_ssh_private_key`` (OpenSSH format), and
``flwr supernode register`` loads the public key with ``load_ssh_public_key``
(an ``ecdsa-sha2-nistp384 AAAA...`` line). The SuperLink only accepts a SuperNode whose
public key was registered with ``flwr supernode register`` while it runs with
``--enable-supernode-auth``, which in turn requires TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

#: Hosts every SuperLink certificate is valid for, so that local trials and the
#: SuperLink's own SuperExec (which connects to 127.0.0.1) verify it.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")

# `flwr supernode register` (flwr 1.42) asks for a P-384 or other NIST-curve public key.
# The TLS keys use P-384 too.
_CURVE = ec.SECP384R1
_HASH = hashes.SHA384


@dataclass(frozen=True)
class SuperNodeKeys:
    """Files of one SuperNode: the CA certificate and its authentication key pair."""

    folder: Path
    root_certificate: Path
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Credentials:
    """Paths of the files written by :func:`generate_credentials`."""

    ca_certificate: Path
    ca_key: Path
    superlink_certificate: Path
    superlink_key: Path
    superlink_ca_certificate: Path
    supernodes: list[SuperNodeKeys]


def generate_credentials(
    out_dir: Path,
    num_supernodes: int,
    hosts: Sequence[str] = (),
    valid_days: int = 365,
) -> Credentials:
    """Write a CA, the SuperLink's TLS certificate and key, and SuperNode key pairs.

    Parameters
    ----------
    out_dir : Path
        Folder to write into, created when missing. Existing credential files in it
        are never overwritten.
    num_supernodes : int
        Number of SuperNode authentication key pairs, >= 1.
    hosts : sequence of str
        Extra host names or IP addresses the SuperLink is reached at. The certificate
        is always valid for 127.0.0.1 and localhost too.
    valid_days : int
        Validity of the CA and the SuperLink certificate in days, >= 1.

    Returns
    -------
    Credentials
        Paths of every file written.

    Raises
    ------
    ValueError
        If `num_supernodes` or `valid_days` is < 1 or a host is empty.
    FileExistsError
        If `out_dir` already contains a file this function would write.
    """
    if isinstance(num_supernodes, bool) or not isinstance(num_supernodes, int) or num_supernodes < 1:
        raise ValueError(f"--supernodes (num_supernodes) must be an integer >= 1, got {num_supernodes!r}")
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise ValueError(f"--days (valid_days) must be an integer >= 1, got {valid_days!r}")
    all_hosts = _unique_hosts([*LOOPBACK_HOSTS, *hosts])

    out_dir = Path(out_dir)
    ca_dir, link_dir = out_dir / "ca", out_dir / "superlink"
    node_dirs = [out_dir / f"supernode-{i}" for i in range(num_supernodes)]
    targets = [ca_dir / "ca.crt", ca_dir / "ca.key", link_dir / "ca.crt", link_dir / "server.crt",
               link_dir / "server.key"]
    for folder in node_dirs:
        targets += [folder / "ca.crt", folder / "auth.key", folder / "auth.pub"]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise FileExistsError(
            f"credential files already exist: {', '.join(existing[:3])}"
            f"{' ...' if len(existing) > 3 else ''}; choose another output folder or remove them"
        )

    # 1. The certificate authority, self-signed, and the SuperLink's certificate signed by it.
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(minutes=5)  # tolerates small clock differences
    not_after = now + datetime.timedelta(days=valid_days)
    ca_key = ec.generate_private_key(_CURVE())
    ca_cert = _issue_ca_certificate(ca_key, not_before, not_after)
    server_key = ec.generate_private_key(_CURVE())
    server_cert = _issue_server_certificate(
        server_key.public_key(), all_hosts, ca_key, ca_cert, not_before, not_after
    )

    # 2. Write the CA and SuperLink files. Private keys are readable by the owner only.
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(ca_dir / "ca.crt", ca_pem)
    _write(ca_dir / "ca.key", _pem_private_key(ca_key), private=True)
    _write(link_dir / "ca.crt", ca_pem)
    _write(link_dir / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    _write(link_dir / "server.key", _pem_private_key(server_key), private=True)

    # 3. One authentication key pair per SuperNode, in the OpenSSH formats Flower reads.
    supernodes = []
    for folder in node_dirs:
        private_bytes, public_bytes = generate_supernode_key_pair()
        keys = SuperNodeKeys(
            folder=folder,
            root_certificate=folder / "ca.crt",
            private_key=folder / "auth.key",
            public_key=folder / "auth.pub",
        )
        _write(keys.root_certificate, ca_pem)
        _write(keys.private_key, private_bytes, private=True)
        _write(keys.public_key, public_bytes)
        supernodes.append(keys)

    logger.info(
        "Wrote a CA, a SuperLink certificate for %s and %s SuperNode key pairs to %s",
        ", ".join(all_hosts), num_supernodes, out_dir,
    )
    return Credentials(
        ca_certificate=ca_dir / "ca.crt",
        ca_key=ca_dir / "ca.key",
        superlink_certificate=link_dir / "server.crt",
        superlink_key=link_dir / "server.key",
        superlink_ca_certificate=link_dir / "ca.crt",
        supernodes=supernodes,
    )


def generate_supernode_key_pair() -> tuple[bytes, bytes]:
    """Return a new P-384 key pair as (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(_CURVE())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private_bytes, public_bytes + b"\n"


def _issue_ca_certificate(
    key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime, not_after: datetime.datetime
) -> x509.Certificate:
    """Issue a self-signed CA certificate that cannot sign further CAs (path length 0)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlab deployment CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _HASH())
    )


def _issue_server_certificate(
    public_key: ec.EllipticCurvePublicKey,
    hosts: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """Issue a TLS server certificate for `hosts` (one SAN entry each), signed by the CA."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlab SuperLink")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, _HASH())
    )


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _is_host(name: str) -> bool:
    """Return True for an IP address or a DNS name (dot-separated labels, optional ``*.``)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        pass
    labels = name.removeprefix("*.").rstrip(".").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in labels)


def _unique_hosts(hosts: Iterable[str]) -> list[str]:
    unique: list[str] = []
    for host in hosts:
        name = host.strip()
        if not name:
            raise ValueError(f"host names must not be empty, got {host!r}")
        if not _is_host(name):
            raise ValueError(
                f"--host {host!r} is neither an IP address nor a DNS name; use letters, digits and "
                "'-' in dot-separated labels, such as superlink.example.org"
            )
        if name not in unique:
            unique.append(name)
    return unique


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Return an IPAddress entry for each IP literal and a DNSName entry for every other host."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Exclusive creation so that a file that appeared since the check is not overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
