"""omnirad-client's checks before it connects, the SuperNode it starts, and the ClientApp's view of
a deployed site: its own file, weights and cache, and a refusal to train on other encoder weights."""

import numpy as np
import pytest
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from omnirad.config import ConfigError, to_flat
from omnirad.encoders import weights_fingerprint
from omnirad.protocol import ENCODER_FINGERPRINT, WRONG_ENCODER
from omnirad_fl.client.app import app
from omnirad_fl.client.cli import main, preflight, supernode_command
from omnirad_fl.client.deployment import site_of, site_plan, task_name
from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.client.site_config import load_site_config
from omnirad_fl.server.certs import write_federation
from omnirad_fl.simulations.deploy_demo import write_encoder_weights
from omnirad_fl.simulations.flower_local import instruction


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_encoder_weights(tmp_path_factory.mktemp("weights") / "vit-tiny.safetensors")


def write_site(folder, weights, **changes):
    """A complete, valid site folder; ``changes`` replace keys (dotted) in its site file."""
    write_federation(folder / "certs", ["localhost"], {"A": write_site_keys(folder / "A.key", "A")})
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 1))
    np.savez(folder / "site-a.npz", train_images=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), train_labels=labels)
    site = {"site": {"name": "A", "id": 1}, "server": {"address": "127.0.0.1:9092", "ca-certificate": "certs/ca.crt"},
            "auth-key": "A.key", "data": {"file": "site-a.npz", "task": "multi-class", "num-classes": 3},
            "encoder": {"name": "vit-tiny", "weights": str(weights), "sha256": weights_fingerprint(str(weights))},
            "cache-dir": "cache", "state-dir": "state"}
    for key, value in changes.items():
        node, *path = key.split(".")
        holder = site
        for part in [node, *path][:-1]:
            holder = holder[part]
        holder[[node, *path][-1]] = value
    path = folder / "A.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def test_a_complete_site_passes_every_check(tmp_path, weights):
    path = write_site(tmp_path, weights)
    cfg = load_site_config(path)
    assert cfg.data.file == str(tmp_path / "site-a.npz")  # relative to the site file
    passed = preflight(cfg, path)
    assert passed[0] == "site-a.npz: 40 train images (multi-class, 3 classes); per class: 0: 14, 1: 13, 2: 13"
    assert "SHA-256 matches" in passed[1]
    command = supernode_command(cfg)
    assert command[command.index("--root-certificates") + 1] == str(tmp_path / "certs" / "ca.crt")
    assert command[command.index("--auth-supernode-private-key") + 1] == str(tmp_path / "A.key")
    assert f'data-file="{tmp_path / "site-a.npz"}"' in command[command.index("--node-config") + 1]
    # what the site keeps per run (DP ledger, personal layers): beside the SuperNode's folder unless the file says
    assert f'site-state-dir="{tmp_path / "state" / "site-state"}"' in command[command.index("--node-config") + 1]
    other = tmp_path / "other"
    other.mkdir()
    assert load_site_config(write_site(other, weights, **{"site-state-dir": "kept"})).site_state_dir == \
        str(other / "kept")
    assert "--insecure" not in command


@pytest.mark.parametrize(("change", "named"), [
    ({"server.address": "fl.example.org"}, "server.address"),
    ({"server.ca-certificate": "certs/missing.crt"}, "server.ca-certificate"),
    ({"auth-key": ""}, "auth-key"),
    ({"data.file": "missing.npz"}, "missing.npz"),
    ({"data.num-classes": 2}, "labels"),  # the file holds class 2: out of range for 2 classes
    ({"data.task": "classification"}, "data.task"),
    ({"encoder.sha256": "0" * 64}, "encoder.sha256"),
    ({"encoder.name": "vit-huge"}, "encoder.name"),
    ({"site.id": -1}, "site.id"),
    ({"site.colour": "red"}, "colour"),
    ({"data.task-name": "shared"}, "data.task-name"),  # the name of what all tasks share
])
def test_each_problem_is_named_before_anything_connects(tmp_path, weights, capsys, change, named):
    path = write_site(tmp_path, weights, **change)
    assert main(["--site", "A", "--config", str(path), "--check"]) == 2
    error = capsys.readouterr().err
    assert "site A is not ready" in error and str(path) in error and named in error


def test_the_wrong_site_file_is_refused(tmp_path, weights, capsys):
    path = write_site(tmp_path, weights)
    assert main(["--site", "B", "--config", str(path), "--check"]) == 2
    assert "site.name is 'A', not 'B'" in capsys.readouterr().err


def test_insecure_sites_start_the_supernode_without_tls(tmp_path, weights):
    path = write_site(tmp_path, weights, **{"server.ca-certificate": "", "server.insecure": True})
    cfg = load_site_config(path)
    preflight(cfg, path)
    command = supernode_command(cfg)
    assert "--insecure" in command and "--root-certificates" not in command
    assert "--auth-supernode-private-key" not in command  # Flower authenticates SuperNodes over TLS only


def deployed_context(tmp_path, weights, run_config):
    node = {"site-id": 1, "site-name": "A", "data-file": str(write_npz(tmp_path)), "model-weights": str(weights),
            "cache-dir": str(tmp_path / "cache")}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run_config)


def write_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "site.npz"
    np.savez(path, train_images=rng.integers(0, 255, (30, 28, 28), dtype=np.uint8), train_labels=rng.integers(0, 3, (30, 1)))
    return path


SERVER = {"data.dataset": "deployment", "data.task": "multi-class", "data.num-classes": 3, "data.size": 28,
          "model.weights": "/server/path/weights.safetensors", "train.local-epochs": 1, "model.adapter": "linear"}


def test_a_deployed_site_trains_on_its_own_file_weights_and_cache(tmp_path, weights):
    cfg, site_id = site_of(deployed_context(tmp_path, weights, SERVER))
    flat = to_flat(cfg)
    assert site_id == 1
    assert flat["data.site-files"] == str(tmp_path / "site.npz") and flat["model.weights"] == str(weights)
    assert flat["model.cache-dir"] == str(tmp_path / "cache") and flat["data.num-classes"] == 3


def test_a_simulation_run_is_refused_by_a_deployed_site(tmp_path, weights):
    with pytest.raises(ConfigError, match="data.dataset='deployment'"):
        site_of(deployed_context(tmp_path, weights, {**SERVER, "data.dataset": "embedded"}))


@pytest.mark.parametrize("server_weights", ["ab" * 32, "random-init"])
def test_a_site_with_other_encoder_weights_refuses_to_train(tmp_path, weights, server_weights):
    context = deployed_context(tmp_path, weights, SERVER)
    content = RecordDict({"arrays": ArrayRecord({}), "config": ConfigRecord({"server-round": 1,
                                                                             ENCODER_FINGERPRINT: server_weights})})
    reply = app(instruction("train", content, node_id=7), context)
    assert reply.has_error() and reply.error.code == WRONG_ENCODER
    assert server_weights[:24] in reply.error.reason
    assert str(weights.parent) not in reply.error.reason  # the reply names fingerprints, never the site's paths


MULTITASK_SERVER = {**SERVER, "multitask.site-tasks": "declared", "data.num-classes": 0}


def test_a_deployed_site_declares_the_task_named_in_its_site_file(tmp_path, weights):
    path = write_site(tmp_path, weights, **{"data.task-name": "body-region"})
    command = supernode_command(load_site_config(path))
    node_config = command[command.index("--node-config") + 1]
    assert 'task-name="body-region" task-kind="multi-class" num-classes=3' in node_config
    context = deployed_context(tmp_path, weights, MULTITASK_SERVER)
    context.node_config.update({"task-name": "body-region", "task-kind": "multi-class", "num-classes": 3})
    cfg, site_id = site_of(context)
    assert task_name(site_plan(context)[0], site_id, context.node_config) == "body-region"
    assert cfg.data.num_classes == 3 and cfg.model.adapter == "linear"
    reply = app(instruction("query.task", RecordDict(), node_id=7), context)
    assert dict(reply.content["declaration"]) == {"site-id": 1, "task": "body-region", "kind": "multi-class",
                                                  "labels": ["0", "1", "2"]}


def test_a_task_declaration_and_a_single_task_run_do_not_mix(tmp_path, weights):
    with pytest.raises(ConfigError, match="data.task-name"):
        site_of(deployed_context(tmp_path, weights, MULTITASK_SERVER))  # the site names no task
    context = deployed_context(tmp_path, weights, SERVER)
    context.node_config.update({"task-name": "body-region", "task-kind": "multi-class", "num-classes": 3})
    with pytest.raises(ConfigError, match="single-task"):
        site_of(context)
