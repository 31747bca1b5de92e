"""Wrong credentials are named before anything connects: at a site (its CA certificate expired or not
a CA, its key pair mismatched or another site's) and at the server (its certificate expired, from
another CA or not its key's; two sites registered with one key)."""

import datetime as dt
import shutil

import pytest
import yaml

from omnirad.credentials import ca_certificate_problems, server_credential_problems, site_key_problems
from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.client.site_config import load_site_config, problems
from omnirad_fl.server.certs import write_federation
from omnirad_fl.server.cli import main as server_main

LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)  # omnirad-certs issues for 365 days by default
EARLIER = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


@pytest.fixture
def federation(tmp_path):
    """Certificates for a federation of sites A and B, each site's keys in its own folder."""
    public = {name: write_site_keys(tmp_path / name / f"{name}.key", name) for name in "AB"}
    write_federation(tmp_path / "certs", ["localhost"], public)
    return tmp_path


def site_problems(folder, name: str, **changes) -> list[str]:
    site = {"site": {"name": name, "id": 0}, "server": {"address": "127.0.0.1:9092", "ca-certificate": "../certs/ca.crt"},
            "auth-key": f"{name}.key", "data": {"file": "data.npz"}, **changes}
    path = folder / name / f"{name}.yaml"
    path.write_text(yaml.safe_dump(site))
    return problems(load_site_config(path), path)


def test_a_sites_own_credentials_pass(federation):
    assert site_problems(federation, "A") == []


def test_a_ca_certificate_expired_not_yet_valid_or_not_a_ca_is_named(federation):
    ca = federation / "certs" / "ca.crt"
    assert ca_certificate_problems(ca) == []
    (expired,) = ca_certificate_problems(ca, now=LATER)
    assert expired.startswith(f"{ca}: expired on ") and "omnirad-certs" in expired
    assert "not valid before" in ca_certificate_problems(ca, now=EARLIER)[0]
    (found,) = site_problems(federation, "A", server={"address": "127.0.0.1:9092", "ca-certificate": "../certs/server.crt"})
    assert "server.ca-certificate" in found and "not a CA certificate" in found


def test_a_key_that_does_not_match_its_public_key_or_was_made_for_another_site_is_named(federation):
    shutil.copy(federation / "B" / "B.pub", federation / "A" / "A.pub")  # A's private key beside B's public key
    mismatch, comment = site_problems(federation, "A")
    assert "auth-key" in mismatch and "A.key: does not match" in mismatch and "A.pub" in mismatch
    assert "made for site 'B', not 'A'" in comment
    (found,) = site_problems(federation, "B", **{"auth-key": "B.key"}, site={"name": "C", "id": 2})
    assert "made for site 'B', not 'C'" in found
    (federation / "A" / "A.key").write_text("not a key")
    assert "not a readable unencrypted OpenSSH private key" in site_key_problems(federation / "A" / "A.key", "A")[0]


def test_the_server_names_an_expired_certificate_one_from_another_ca_or_another_key(federation, tmp_path):
    certs = federation / "certs"
    files = (certs / "ca.crt", certs / "server.crt", certs / "server.key")
    assert server_credential_problems(*files) == []
    assert any("server.crt: expired on" in p for p in server_credential_problems(*files, now=LATER))
    write_federation(tmp_path / "other", ["localhost"])  # another federation's CA and server certificate
    foreign = server_credential_problems(certs / "ca.crt", tmp_path / "other" / "server.crt", certs / "server.key")
    assert any("not issued by" in p for p in foreign) and any("server.key: not the key of" in p for p in foreign)


@pytest.mark.parametrize("fault", ["another CA's certificate", "two sites with one key"])
def test_the_server_refuses_to_start_with_unusable_credentials(federation, tmp_path, capsys, fault):
    certs, state = federation / "certs", tmp_path / "state"
    if fault == "another CA's certificate":
        write_federation(tmp_path / "other", ["localhost"])
        for name in ("server.crt", "server.key"):
            (certs / name).unlink()
            shutil.copy(tmp_path / "other" / name, certs / name)
    else:
        shutil.copy(certs / "sites" / "A.pub", certs / "sites" / "B.pub")
    assert server_main(["--state-dir", str(state), "--certs", str(certs), "data.num-classes=3",
                        "data.num-sites=2"]) == 2
    err = capsys.readouterr().err
    assert "credentials are not usable" in err
    assert ("not issued by" in err) if fault == "another CA's certificate" else ("the same key as site A's" in err)
    assert not state.exists()  # nothing was started or written


def test_a_private_key_other_users_may_read_is_named(federation):
    key, server_key = federation / "A" / "A.key", federation / "certs" / "server.key"
    key.chmod(0o644)
    (found,) = site_problems(federation, "A")
    assert "auth-key" in found and "A.key: readable or writable by other users (mode 644)" in found
    assert "chmod 600" in found
    server_key.chmod(0o640)
    certs = federation / "certs"
    (exposed,) = server_credential_problems(certs / "ca.crt", certs / "server.crt", server_key)
    assert "server.key: readable or writable by other users (mode 640)" in exposed


def test_a_missing_key_names_the_command_that_makes_it(federation):
    (found,) = site_problems(federation, "A", **{"auth-key": "missing.key"})
    assert "omnirad-client --site A --keygen" in found and "omnirad-certs" not in found
