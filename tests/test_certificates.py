"""TLS certificates and SuperNode key pairs: they chain, name the right hosts, and load where Flower loads them."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from fedqc.errors import UserError
from fedqc.transport.flower.deploy.certificates import write_loopback_tls, write_server_certificates, write_site_keys
from fedqc.transport.flower.deploy.sites import split_sites
from tests.test_bad_inputs import assert_clean_failure, run


def _load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _handshake(files, server_name: str) -> None:
    """A TLS handshake with a server holding ``files``' server pair, checked against ``files.ca_cert``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with client_ctx.wrap_socket(sock, server_hostname=server_name):
                pass
    finally:
        thread.join(10)
        listener.close()


def test_server_certificate_chains_to_the_ca_and_names_loopback_and_the_given_hosts(tmp_path):
    files = write_server_certificates(tmp_path / "c", hosts=["superlink", "10.1.2.3"])
    ca, server = _load(files.ca_cert), _load(files.server_cert)
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                           ipaddress.ip_address("10.1.2.3")}
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()
    for private in (files.server_key, files.ca_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    for name in ("127.0.0.1", "localhost", "superlink"):
        _handshake(files, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, "elsewhere.example.org")


def test_nothing_is_overwritten_unless_asked(tmp_path):
    files = write_server_certificates(tmp_path)
    before = files.ca_cert.read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        write_server_certificates(tmp_path, hosts=["superlink"])
    assert files.ca_cert.read_bytes() == before
    write_server_certificates(tmp_path, overwrite=True)
    assert files.ca_cert.read_bytes() != before


def test_site_keys_are_what_flower_loads(tiny_cohort, tmp_path):
    sites = tmp_path / "s"
    split_sites(tiny_cohort / "manifest.csv", sites)
    keys = write_site_keys(sites)
    assert sorted(keys) == sorted(p.name for p in sites.iterdir() if p.is_dir())
    for site, files in keys.items():
        assert files.private == sites / site / "keys" / "supernode.key"
        assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
        assert files.public.read_text().rstrip().endswith(f" {site}")  # whose key, for the coordinator
        # Flower's own loaders: the SuperNode's private key and `flwr supernode register`'s public key
        private, public = _try_setup_client_authentication(
            argparse.Namespace(auth_supernode_private_key=str(files.private), auth_supernode_public_key=None))
        assert isinstance(private.curve, ec.SECP384R1)
        assert try_load_public_key(files.public) == public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len({f.public.read_text().split()[1] for f in keys.values()}) == len(keys), "one key per site"
    before = {s: f.private.read_bytes() for s, f in keys.items()}
    with pytest.raises(UserError, match="--overwrite"):
        write_site_keys(sites)
    assert {s: f.private.read_bytes() for s, f in keys.items()} == before


def test_loopback_set_stays_in_the_run_folder(tmp_path):
    server, keys = write_loopback_tls(tmp_path / "tls", ["hospitalA", "hospitalB"])
    assert {p.name for p in (tmp_path / "tls").iterdir()} == {
        "ca.crt", "ca.key", "server.crt", "server.key",
        "hospitalA.key", "hospitalA.pub", "hospitalB.key", "hospitalB.pub"}
    assert keys["hospitalB"].public == tmp_path / "tls" / "hospitalB.pub"
    _handshake(server, "127.0.0.1")


def test_certificate_commands(tiny_cohort, tmp_path):
    code, text, _ = run(["sites", "certificates", "--out", str(tmp_path / "c"), "--host", "superlink"])
    assert code == 0, text
    assert "superlink" in _load(tmp_path / "c" / "server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert_clean_failure(["sites", "certificates", "--out", str(tmp_path / "c")], "use --overwrite to replace")
    split_sites(tiny_cohort / "manifest.csv", tmp_path / "s")
    code, text, _ = run(["sites", "keys", "--site", str(tmp_path / "s" / "alpha")])
    assert code == 0, text
    assert (tmp_path / "s" / "alpha" / "keys" / "supernode.pub").is_file()
    assert not (tmp_path / "s" / "beta" / "keys").exists()
    assert_clean_failure(["sites", "keys", "--sites", str(tmp_path / "s")], "use --overwrite to replace")
    assert not (tmp_path / "s" / "beta" / "keys").exists(), "nothing written when one site's key exists"
    assert_clean_failure(["sites", "keys"], "give either --sites or --site")
