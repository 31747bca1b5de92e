"""omnirad-certs and a site's own keys: a CA (optionally passphrase-protected), a server certificate
the CA signed for the right names, and site keys made at the site, registered by their public key
alone."""

import ipaddress
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.supernode.register import try_load_public_key

from omnirad_fl.client.cli import main as client_main
from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.server.certs import main, registered_key_path, write_federation


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    write_federation(tmp_path, ["fl.example.org", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]  # omnirad-server's own calls
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for secret in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600


def test_a_site_makes_its_own_key_and_the_coordinator_registers_the_public_key_alone(tmp_path, capsys):
    site_file = tmp_path / "site" / "A.yaml"
    site_file.parent.mkdir()
    site_file.write_text(yaml.safe_dump({"site": {"name": "A", "id": 0}}))
    assert client_main(["--site", "A", "--config", str(site_file), "--keygen"]) == 0
    printed = capsys.readouterr()
    private_path, public_path = tmp_path / "site" / "A.key", tmp_path / "site" / "A.pub"
    assert printed.out.strip() == public_path.read_text().strip()  # only the public key is printed
    assert "PRIVATE" not in printed.out + printed.err and "--site A=A.pub" in printed.err
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private = load_ssh_private_key(private_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert load_ssh_public_key(public_path.read_bytes()).public_numbers() == private.public_key().public_numbers()
    assert client_main(["--site", "A", "--config", str(site_file), "--keygen"]) == 2  # a site keeps its key

    certs = tmp_path / "certs"
    assert main([str(certs), "--site", f"A={public_path}"]) == 0
    registered = registered_key_path(certs, "A")
    assert registered.read_bytes() == public_path.read_bytes() and try_load_public_key(registered)
    assert not list(certs.rglob("*.key*")) or {p.name for p in certs.rglob("*.key")} == {"ca.key", "server.key"}
    assert main([str(certs), "--site", f"B={private_path}"]) == 2  # a private key is never taken
    assert "a private key" in capsys.readouterr().err and not registered_key_path(certs, "B").exists()


def test_a_second_call_keeps_existing_files_and_refuses_a_different_key_for_a_site(tmp_path):
    first = write_site_keys(tmp_path / "A" / "A.key", "A")
    write_federation(tmp_path / "certs", ["localhost"], {"A": first})
    before = {p: p.read_bytes() for p in (tmp_path / "certs").rglob("*") if p.is_file()}
    other = write_site_keys(tmp_path / "C" / "C.key", "C")
    written = write_federation(tmp_path / "certs", ["localhost"], {"A": first, "C": other})
    assert written == [registered_key_path(tmp_path / "certs", "C")]
    assert all(p.read_bytes() == content for p, content in before.items())
    with pytest.raises(FileExistsError, match="another key for site A"):
        write_federation(tmp_path / "certs", ["localhost"], {"A": other})


def test_a_new_server_name_reissues_the_certificate_from_the_same_ca(tmp_path):
    write_federation(tmp_path, [])
    ca_before = (tmp_path / "ca.crt").read_bytes()
    written = write_federation(tmp_path, ["fl.example.org"])
    assert set(written) == {tmp_path / "server.crt", tmp_path / "server.key"}
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))
    assert {"fl.example.org", "localhost"} <= set(
        server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def test_a_passphrase_protects_the_ca_key_and_is_needed_to_reissue(tmp_path, capsys):
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse battery staple\n")
    certs = tmp_path / "certs"
    assert main([str(certs), "--ca-passphrase-file", str(phrase)]) == 0
    assert b"ENCRYPTED" in (certs / "ca.key").read_bytes()
    assert main([str(certs), "--host", "fl.example.org"]) == 2  # a new name needs the CA key
    assert "passphrase-protected" in capsys.readouterr().err
    assert main([str(certs), "--host", "fl.example.org", "--ca-passphrase-file", str(phrase)]) == 0


def test_bad_site_names_are_refused_with_the_name(tmp_path, capsys):
    public = write_site_keys(tmp_path / "keys" / "x.key", "x")
    assert main([str(tmp_path / "certs"), "--site", f"../evil={public}"]) == 2
    assert "'../evil'" in capsys.readouterr().err
    assert not (tmp_path / "certs").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="site name"):
        write_federation(tmp_path / "certs", ["localhost"], {"a b": public})
