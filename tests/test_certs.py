"""omnirad-certs: a CA, a server certificate the CA signed for the right names, site keys Flower reads."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.supernode.register import try_load_public_key

from omnirad_fl.server.certs import main, site_key_paths, write_federation


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    write_federation(tmp_path, ["fl.example.org", "127.0.0.1"], ["A"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]  # omnirad-server's own calls
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for secret in ("ca.key", "server.key", "sites/A.key"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600


def test_site_keys_are_the_ec_openssh_keys_flower_reads(tmp_path):
    write_federation(tmp_path, ["localhost"], ["A", "B"])
    private_path, public_path = site_key_paths(tmp_path, "B")
    private = load_ssh_private_key(private_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert load_ssh_public_key(public_path.read_bytes()).public_numbers() == private.public_key().public_numbers()
    assert try_load_public_key(public_path)  # what `flwr supernode register` does with the file


def test_a_second_call_keeps_existing_files_and_adds_new_sites(tmp_path):
    write_federation(tmp_path, ["localhost"], ["A"])
    site_key_paths(tmp_path, "A")[0].unlink()  # the private key went to the site; the public one stays
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    written = write_federation(tmp_path, ["localhost"], ["A", "C"])
    assert written == list(site_key_paths(tmp_path, "C"))
    assert all(p.read_bytes() == content for p, content in before.items())


def test_a_new_server_name_reissues_the_certificate_from_the_same_ca(tmp_path):
    write_federation(tmp_path, [], ["A"])
    ca_before = (tmp_path / "ca.crt").read_bytes()
    written = write_federation(tmp_path, ["fl.example.org"], [])
    assert set(written) == {tmp_path / "server.crt", tmp_path / "server.key"}
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))
    assert {"fl.example.org", "localhost"} <= set(
        server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def test_bad_site_names_are_refused_with_the_name(tmp_path, capsys):
    assert main([str(tmp_path), "--sites", "../evil"]) == 2
    assert "'../evil'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ValueError, match="site name"):
        write_federation(tmp_path, ["localhost"], ["a b"])
