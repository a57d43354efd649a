"""TLS certificates for a SuperLink and the key pairs that authenticate SuperNodes (Flower 1.41).

Flower 1.41 serves the Fleet, Control and Runtime APIs on one HTTPS port when the
SuperLink gets ``--ssl-ca-certfile``, ``--ssl-certfile`` and ``--ssl-keyfile``. Every
client (SuperNode, SuperExec, the ``flwr`` CLI) checks the server's certificate against
the CA certificate, so the server certificate must name every address clients dial:
``127.0.0.1`` and ``localhost`` on loopback, ``superlink`` inside docker compose, the
public host name on real machines.

With ``--enable-supernode-auth`` a SuperNode signs its requests with its own EC private
key (``--auth-supernode-private-key``, OpenSSH format), and the SuperLink accepts it only
when the matching public key (OpenSSH format, a NIST curve) was registered beforehand
with ``flwr supernode register KEY.pub``. :func:`write_site_key` writes such a pair into
a site's folder: ``keys/supernode.key`` (private, mode 0600) and ``keys/supernode.pub``.

Nothing here overwrites an existing key or certificate unless asked: a replaced CA or
site key silently locks every party that holds the old one out.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedqc.errors import UserError
from fedqc.transport.flower.deploy.sites import SITE_PRIVATE_KEY, SITE_PUBLIC_KEY, read_sites

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1  # P-384, the curve Flower's guide uses for SuperNode keys


@dataclass(frozen=True)
class ServerCertificates:
    """The files a SuperLink and its clients need: the CA (certificate and key) and the server's pair."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SiteKey:
    """A SuperNode's authentication key pair: ``private`` for the SuperNode, ``public`` to register."""

    private: Path
    public: Path


def _refuse_to_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} exist(s); use --overwrite to replace (clients holding the old "
                        "ones are then locked out)")


def _write_private(data: bytes, path: Path) -> None:
    """Write a private key readable by its owner only, never world-readable even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_public(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_server_certificates(out: str | Path, *, hosts: list[str] | tuple[str, ...] = (),
                              days: int = 365, overwrite: bool = False) -> ServerCertificates:
    """Write a CA and a server certificate it signs, valid for ``127.0.0.1``, ``localhost`` and ``hosts``.

    Files in ``out``: ``ca.crt``, ``ca.key`` (keep it with the coordinator; only ``ca.crt``
    goes to sites), ``server.crt``, ``server.key`` (for the SuperLink). ``hosts`` are the
    extra names or IP addresses clients dial, e.g. ``superlink`` in docker compose.
    """
    out = Path(out)
    files = ServerCertificates(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")
    _refuse_to_overwrite([files.ca_cert, files.ca_key, files.server_cert, files.server_key], overwrite)
    if days < 1:
        raise UserError(f"--days must be at least 1, got {days}")
    names = list(dict.fromkeys([*LOOPBACK_HOSTS, *(h.strip() for h in hosts)]))
    if "" in names:
        raise UserError("an empty host name was given")
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedqc federation CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    server_key = ec.generate_private_key(CURVE())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))

    _write_private(_pem_key(ca_key), files.ca_key)
    _write_public(ca_cert.public_bytes(serialization.Encoding.PEM), files.ca_cert)
    _write_private(_pem_key(server_key), files.server_key)
    _write_public(server_cert.public_bytes(serialization.Encoding.PEM), files.server_cert)
    return files


def site_key_paths(folder: str | Path) -> SiteKey:
    """Where a site folder keeps its SuperNode key pair."""
    return SiteKey(Path(folder) / SITE_PRIVATE_KEY, Path(folder) / SITE_PUBLIC_KEY)


def write_key_pair(private: Path, public: Path, *, comment: str, overwrite: bool = False) -> SiteKey:
    """Write a SuperNode key pair (P-384, OpenSSH format): ``private`` (mode 0600) and ``public``.

    The SuperNode reads the private key with ``--auth-supernode-private-key``; the public
    one goes to the coordinator, who registers it with ``flwr supernode register``.
    ``comment`` ends the public key's line and tells the coordinator whose key it is.
    """
    files = SiteKey(Path(private), Path(public))
    _refuse_to_overwrite([files.private, files.public], overwrite)
    key = ec.generate_private_key(CURVE())
    _write_private(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                     serialization.NoEncryption()), files.private)
    _write_public(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                  + f" {comment}\n".encode(), files.public)
    return files


def write_site_key(folder: str | Path, *, overwrite: bool = False) -> SiteKey:
    """Write a site's key pair into ``folder/keys/`` (see :func:`write_key_pair`)."""
    files = site_key_paths(folder)
    return write_key_pair(files.private, files.public, comment=Path(folder).resolve().name, overwrite=overwrite)


def write_site_keys(sites_dir: str | Path, *, overwrite: bool = False) -> dict[str, SiteKey]:
    """A key pair in ``<site>/keys/`` for every site of a folder made by ``fedqc sites split``."""
    sites_dir = Path(sites_dir)
    sites = read_sites(sites_dir)
    _refuse_to_overwrite([p for s in sites for p in (site_key_paths(sites_dir / s).private,
                                                     site_key_paths(sites_dir / s).public)], overwrite)
    return {s: write_site_key(sites_dir / s, overwrite=overwrite) for s in sites}


def write_loopback_tls(out: str | Path, sites: list[str]) -> tuple[ServerCertificates, dict[str, SiteKey]]:
    """Everything a loopback TLS deployment needs, all inside ``out`` (a fresh run's folder).

    The sites' folders are left untouched: their throwaway key pairs go to
    ``out/<site>.key`` and ``out/<site>.pub``.
    """
    out = Path(out)
    server = write_server_certificates(out)
    keys = {s: write_key_pair(out / f"{s}.key", out / f"{s}.pub", comment=s) for s in sites}
    return server, keys


def main() -> None:
    """``python -m fedqc.transport.flower.deploy.certificates OUT SITE...``: the loopback set, for shell scripts."""
    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m fedqc.transport.flower.deploy.certificates OUT [SITE...]")
    try:
        write_loopback_tls(args[0], args[1:])
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
