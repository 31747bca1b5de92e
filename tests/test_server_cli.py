"""omnirad-server's work before it starts anything (the run configuration, --resume, TLS files, the
SuperLink's command line). An insecure local server that starts and whose sites connect is in
test_e2e_deployment.py (one federation with the app-trust test)."""

import os
import re
import shlex
import time

import pytest
from flwr.common.config import parse_config_args

from omnirad.config import ConfigError, to_flat
from omnirad.configure import load_config
from omnirad_fl.server.certs import main as certs_main
from omnirad_fl.server.certs import write_federation
from omnirad_fl.server.cli import (
    SuperLink,
    finished_run,
    latest_checkpointed_run,
    main,
    parse_args,
    run_configuration,
    tls_files,
    write_run_config,
)


def test_a_yaml_run_configuration_reaches_flower_unchanged(tmp_path):
    config = tmp_path / "federation.yaml"
    test_file = tmp_path / "with space" / "test.npz"
    test_file.parent.mkdir()
    test_file.write_bytes(b"")
    config.write_text("num-server-rounds: 3\ndata:\n  task: multi-class\n  num-classes: 4\n  num-sites: 3\n"
                      f"  test-file: {test_file}\nmodel.adapter: linear\n")
    flat = run_configuration(config, ["train.lr=0.01", "strategy.name=fedprox"], tmp_path / "runs", resume=False)
    toml = write_run_config(flat, tmp_path / "run.toml")
    received = load_config(parse_config_args([str(toml)]))  # what the ServerApp gets from `flwr run`
    assert to_flat(received) == to_flat(load_config(flat))
    assert received.data.dataset == "deployment" and received.data.test_file == str(test_file)
    assert received.train.lr == 0.01 and received.strategy.name == "fedprox" and received.num_server_rounds == 3
    assert received.run.output_dir == str(tmp_path / "runs")


def test_relative_paths_are_made_absolute_and_files_checked_before_the_server_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.npz").write_bytes(b"")
    flat = run_configuration(None, ["data.test-file=test.npz", "run.output-dir=results", "data.num-classes=3",
                                    "data.num-sites=2"], tmp_path / "state", resume=False)
    assert flat["data.test-file"] == str(tmp_path / "test.npz") and flat["run.output-dir"] == str(tmp_path / "results")
    with pytest.raises(ConfigError, match="model.weights: .*missing.safetensors: no such file"):
        run_configuration(None, ["model.weights=missing.safetensors"], tmp_path, resume=False)


def test_only_a_summary_written_by_this_run_counts_as_finished(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    old = time.time() - 100
    os.utime(folder / "summary.json", (old, old))
    flat = {"run.resume-from": str(folder), "run.output-dir": str(tmp_path)}
    assert finished_run(flat, started=time.time() - 10) is None  # an extended run that failed
    (folder / "summary.json").write_text("{}")
    assert finished_run(flat, started=time.time() - 10) == folder


def test_a_deployment_must_say_how_many_sites_to_wait_for(tmp_path):
    with pytest.raises(ConfigError, match="data.num-sites': 0 .*the number of sites in deployment"):
        run_configuration(None, ["data.num-classes=3"], tmp_path, resume=False)


def test_a_simulated_dataset_is_refused_for_a_deployment(tmp_path):
    with pytest.raises(ConfigError, match="data.dataset='embedded'"):
        run_configuration(None, ["data.dataset=embedded"], tmp_path, resume=False)


def test_resume_picks_the_newest_run_folder_with_a_checkpoint(tmp_path):
    for name, age in (("old", 100), ("new", 10)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.json").write_text("{}")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    (tmp_path / "newest-without-checkpoint").mkdir()
    assert latest_checkpointed_run(tmp_path) == tmp_path / "new"
    with pytest.raises(ConfigError, match="no run folder with a checkpoint"):
        latest_checkpointed_run(tmp_path / "new")


def test_bad_input_stops_the_server_before_anything_starts(tmp_path, capsys):
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "data.num-classes=3", "data.num-sites=2"]
    assert main([*common, "--certs", str(tmp_path / "no-certs")]) == 2
    assert "omnirad-certs" in capsys.readouterr().err
    assert main([*common, "--insecure", "train.lr=-1"]) == 2
    assert "'train.lr'" in capsys.readouterr().err
    assert main([*common, "--insecure", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such configuration file" in capsys.readouterr().err
    assert not state.exists()  # nothing was started or written


def test_insecure_starts_a_superlink_flower_accepts_and_tls_adds_site_authentication(tmp_path):
    """Flower refuses --enable-supernode-auth without TLS (exit 104): --insecure must not pass it."""
    write_federation(tmp_path / "certs", ["127.0.0.1"])
    for insecure in (True, False):
        args = parse_args(["--insecure"] if insecure else ["--certs", str(tmp_path / "certs")])
        command = SuperLink(args, tmp_path, {}, "127.0.0.1", 9999).command()
        assert ("--insecure" in command) is insecure
        assert ("--enable-supernode-auth" in command) is not insecure


def test_the_missing_tls_files_hint_is_a_command_that_makes_them(tmp_path):
    certs = tmp_path / "my certs"
    with pytest.raises(ConfigError, match="TLS files missing") as missing:
        tls_files(certs)
    suggested = shlex.split(re.search(r"`(omnirad-certs [^`]*)`", str(missing.value)).group(1))
    assert certs_main(suggested[1:]) == 0
    assert set(tls_files(certs)) == {"ca", "cert", "key"}
