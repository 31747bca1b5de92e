"""End to end: `flwr run .` on loopback SuperLinks the session shares (one per federation size,
``superlinks`` in conftest.py) or, where a test stops its federation, one it owns; then the run
folder's contents."""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad.site_state import SiteStateStore
from omnirad_fl.server.processes import free_loopback_port
from omnirad_fl.simulations.flower_local import LocalSuperLink, flwr_run, flwr_run_command, write_flower_config
from tests.conftest import PROJECT, still_running

pytestmark = pytest.mark.slow


@pytest.fixture
def run_federation(superlinks, tmp_path):
    """Run the app with ``num_sites`` simulated SuperNodes on the session's SuperLink of that size;
    return its run folder."""
    return lambda num_sites, run_config, folder=tmp_path: superlinks.run(folder, num_sites, run_config)[0]


@pytest.fixture
def run_federations(superlinks, tmp_path):
    """Run the app once per configuration on the session's SuperLink with ``num_sites`` simulated
    SuperNodes; return the run folders in order."""
    return lambda num_sites, *run_configs: superlinks.run(tmp_path, num_sites, *run_configs)


@pytest.fixture(scope="module")
def three_sites_without_data_num_sites(superlinks, tmp_path_factory):
    """Two rounds on three sites, as in a plain Flower set-up, whose federation size is not the
    project's: no data.num-sites, so the run takes the size of Flower's federation (3)."""
    (folder,) = superlinks.run(tmp_path_factory.mktemp("three-sites"), 3,
                               "num-server-rounds=2 data.num-train=600 data.num-test=200 train.local-epochs=2 "
                               "model.adapter='linear' model.head-init='random'", num_sites_key=False)
    return folder


def test_two_rounds_on_three_sites_leave_a_complete_run_folder(three_sites_without_data_num_sites):
    folder = three_sites_without_data_num_sites
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2]
    for line in lines:
        assert set(line["sites"]) == {"0", "1", "2"}
        assert {"accuracy", "macro-f1", "auc"} <= set(line["global"])
        assert all({"train", "evaluate", "bytes-up"} <= set(s) for s in line["sites"].values())
        assert line["bytes-down"] > 0 and line["seconds"] > 0

    summary = json.loads((folder / "summary.json").read_text())
    for key in ("final", "best", "wall-seconds", "bytes-up", "bytes-down", "peak-rss-mb", "sites-per-round"):
        assert key in summary
    assert summary["weights"] == "random init" and summary["rounds"] == 2
    # What a site sends is the linear head (192 x 4 + 4 floats), not the 5.4M-parameter encoder.
    assert summary["adapter-parameter-bytes"] == (192 * 4 + 4) * 4
    assert summary["adapter-parameter-bytes"] <= summary["bytes-up-per-site-round"] < 1.5 * summary["adapter-parameter-bytes"]
    assert "data.num-sites: 3" in (folder / "config.yaml").read_text()
    assert json.loads((folder / "encoder.json").read_text()) == {"encoder": "vit-tiny", "weights": "", "sha256": "random-init"}
    partition = json.loads((folder / "partition.json").read_text())
    assert sum(s["num-samples"] for s in partition["sites"]) == 600
    for name in ("final_adapter.safetensors", "curves.png", "partition.png"):
        assert (folder / name).exists()


def test_without_data_num_sites_a_run_takes_the_size_of_flowers_federation(three_sites_without_data_num_sites):
    """As in a plain Flower set-up, whose federation size is not the project's: no data.num-sites."""
    folder = three_sites_without_data_num_sites
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["num-sites"] == 3 and summary["sites-per-round"] == {"1": ["0", "1", "2"], "2": ["0", "1", "2"]}
    assert "data.num-sites: 3" in (folder / "config.yaml").read_text()
    assert len(json.loads((folder / "partition.json").read_text())["sites"]) == 3


def test_each_site_reads_its_own_file(tmp_path, run_federations):
    """A natural split: one MedMNIST-format file per hospital, and a test file for the server."""
    rng = np.random.default_rng(0)

    def write(name: str, n: int) -> Path:
        labels = rng.integers(0, 3, (n, 1))
        images = (rng.integers(0, 40, (n, 28, 28)) + labels[:, :, None] * 70).astype(np.uint8)  # learnable
        path = tmp_path / name
        np.savez(path, train_images=images, train_labels=labels)
        return path

    files = ",".join(str(write(f"site_{s}.npz", 80)) for s in "ab")
    test_file = write("test.npz", 60)
    shared = (f"data.dataset='files' data.site-files='{files}' data.test-file='{test_file}' data.num-classes=3 "
              "data.size=28 model.adapter='linear' model.head-init='ridge'")
    alone, folder = run_federations(2, f"{shared} num-server-rounds=0", f"{shared} num-server-rounds=2")
    closed_form = json.loads((alone / "summary.json").read_text())
    assert closed_form["rounds"] == 0 and closed_form["final"]["accuracy"] > 0.6  # the closed form alone is the result
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sites"] == ["0", "1"] and summary["final"]["accuracy"] > 0.6
    # the closed-form ridge head is round 0, scored by the server and every site before round 1
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2] and summary["rounds"] == 2
    assert lines[0]["global"] == pytest.approx(closed_form["final"]) and set(lines[0]["sites"]) == {"0", "1"}
    report = json.loads((folder / "closed-form.json").read_text())
    assert set(report["statistics-bytes-per-site"]) == {"site 0", "site 1"} and report["logit-scale"] > 0
    assert summary["closed-form"]["head-init"] == "ridge"


def test_federated_segmentation_with_the_decoder(run_federation):
    folder = run_federation(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                              "data.task='segmentation' model.adapter='decoder' train.local-epochs=2")
    summary = json.loads((folder / "summary.json").read_text())
    assert {"dice", "iou", "dice-with-background"} <= set(summary["final"])
    assert summary["best"]["selected-by"] == "federated-val dice"
    assert 0.0 < summary["final"]["dice"] <= 1.0


def test_federated_captioning_selects_by_cider_and_sends_only_the_decoder(run_federation):
    folder = run_federation(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                              "data.task='captioning' model.adapter='caption-decoder' "
                              "model.caption-width=32 train.local-epochs=2")
    summary = json.loads((folder / "summary.json").read_text())
    assert {"cider", "bleu-4", "rouge-l", "finding-accuracy"} <= set(summary["final"])
    assert summary["best"]["selected-by"] == "federated-val cider"
    decoder = new_model(load_config({"data.task": "captioning", "model.adapter": "caption-decoder", "data.size": 32,
                                     "model.caption-width": 32}))
    assert summary["adapter-parameter-bytes"] == 4 * sum(p.numel() for p in decoder.parameters())


def test_lora_sends_its_low_rank_factors_and_head_and_nothing_else(run_federation):
    folder = run_federation(2, "num-server-rounds=1 data.num-train=80 data.num-test=20 data.size=32 "
                              "model.adapter='lora' model.lora-rank=4 train.local-epochs=1")
    summary = json.loads((folder / "summary.json").read_text())
    # vit-tiny: 12 blocks x rank 4 x (qkv 192+576, proj 192+192, fc1 192+768, fc2 768+192) + linear head 192x4+4
    lora_and_head = (12 * 4 * (768 + 384 + 960 + 960) + 192 * 4 + 4) * 4
    assert summary["adapter-parameter-bytes"] == lora_and_head
    assert lora_and_head <= summary["bytes-up-per-site-round"] <= 1.05 * lora_and_head


def test_fedper_keeps_the_output_layer_at_the_sites(run_federation):
    folder = run_federation(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                              "strategy.name='fedper' model.adapter='mlp' train.local-epochs=2 "
                              "personalization.finetune-epochs=1")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["personalization"] == "fedper" and summary["final"] == {}  # no global head to test
    assert summary["local-parameter-bytes"] == (256 * 4 + 4) * 4  # the MLP head's last Linear
    assert summary["bytes-up-per-site-round"] < 1.01 * summary["adapter-parameter-bytes"]
    assert {"accuracy", "finetuned-accuracy"} <= set(summary["final-federated-val"])
    assert set(summary["final-worst-site"]) >= {"accuracy", "macro-f1"}


def test_spectral_alignment_gathers_a_bank_and_trains_prompts(run_federation):
    folder = run_federation(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                              "data.partition='modality' strategy.name='spectral' train.local-epochs=1")
    summary = json.loads((folder / "summary.json").read_text())
    assert 2 <= summary["spectral-bank-rows"] <= 2 * 4
    assert {"accuracy", "macro-f1"} <= set(summary["final"])
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    weights = [s["train"]["alignment-weight"] for s in lines[-1]["sites"].values()]
    assert len(weights) == 2 and all(1.0 <= w <= 2.0 for w in weights)


def test_a_server_killed_mid_run_resumes_and_ends_as_the_uninterrupted_run(tmp_path, run_federation):
    config = ("num-server-rounds=4 data.num-train=240 data.num-test=80 data.size=32 train.local-epochs=1 "
              "strategy.name='fedadam' model.adapter='linear' model.head-init='random'")
    expected = json.loads((run_federation(2, config, tmp_path / "whole") / "summary.json").read_text())
    # the interrupted run's SuperLink is its own: stopping it mid-run is the test

    flwr_home, runs = tmp_path / "flwr", tmp_path / "runs"
    write_flower_config(flwr_home, num_supernodes=2)
    link = LocalSuperLink(flwr_home, PROJECT, http_port=free_loopback_port())
    with link:
        command = flwr_run_command(PROJECT, f"{config} data.num-sites=2 run.output-dir='{runs}'", 2)
        client = subprocess.Popen(command, cwd=PROJECT, env=link.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not any(json.loads(m.read_text())["round"] >= 2 for m in runs.glob("*/checkpoint.json")):
            assert time.monotonic() < deadline and client.poll() is None, "round 2 was never checkpointed"
            time.sleep(0.5)
    # leaving the block stopped the SuperLink and, by PID, the server app and simulation with it
    assert len(link.started_pids) >= 2 and not still_running(link.started_pids)
    client.wait(timeout=60)
    (folder,) = list(runs.iterdir())
    stopped_after = json.loads((folder / "checkpoint.json").read_text())["round"]
    assert stopped_after < 4 and not (folder / "summary.json").exists()

    link = LocalSuperLink(flwr_home, PROJECT, http_port=free_loopback_port())
    with link:
        completed = flwr_run(PROJECT, link.env, f"{config} data.num-sites=2 run.output-dir='{runs}' run.resume-from='{folder}'", num_supernodes=2)
    assert completed.returncode == 0
    assert not still_running(link.started_pids)
    resumed = json.loads((folder / "summary.json").read_text())
    assert resumed["resumed-after-round"] == stopped_after and resumed["rounds"] == 4
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2, 3, 4]
    for key in ("accuracy", "macro-f1", "loss"):
        assert resumed["final"][key] == pytest.approx(expected["final"][key], abs=1e-4)


def test_a_dp_fedper_run_stopped_and_resumed_ends_with_the_metrics_and_epsilon_of_an_uninterrupted_one(tmp_path, run_federation):
    """The whole federation stops after round 2 (server and sites: their processes end with the
    SuperLink), then the run is resumed for rounds 3 and 4: each site reloads its privacy account
    and its own output layer from its state store, so nothing of rounds 1-2 is lost or spent twice."""
    config = ("data.num-train=160 data.num-test=40 data.size=32 train.local-epochs=1 strategy.name='fedper' model.adapter='mlp' "
              "privacy.dp=true privacy.noise-multiplier=1.5 privacy.epsilon=50.0")
    expected = json.loads((run_federation(2, f"num-server-rounds=4 {config}", tmp_path / "whole") / "summary.json")
                          .read_text())

    flwr_home, runs = tmp_path / "flwr", tmp_path / "runs"
    write_flower_config(flwr_home, num_supernodes=2)
    for rounds, resume in ((2, ""), (4, "run.resume-from='{folder}'")):
        folder = next(runs.iterdir()) if resume else None
        with LocalSuperLink(flwr_home, PROJECT, http_port=free_loopback_port()) as link:
            completed = flwr_run(PROJECT, link.env, f"num-server-rounds={rounds} {config} data.num-sites=2 "
                                 f"run.output-dir='{runs}' {resume.format(folder=folder)}", timeout=900)
        assert completed.returncode == 0
        assert len(link.started_pids) >= 2 and not still_running(link.started_pids)
    (folder,) = list(runs.iterdir())
    resumed = json.loads((folder / "summary.json").read_text())
    assert resumed["resumed-after-round"] == 2 and resumed["rounds"] == 4
    assert resumed["sites-per-round"] == expected["sites-per-round"] == {str(r): ["0", "1"] for r in (1, 2, 3, 4)}
    assert resumed["epsilon-per-site"] == pytest.approx(expected["epsilon-per-site"], rel=1e-9)
    for key, value in expected["final-federated-val"].items():
        assert resumed["final-federated-val"][key] == pytest.approx(value, abs=1e-6), key
    run_key = json.loads((folder / "run.json").read_text())["run-key"]
    for site in (0, 1):  # one file per site for the run, holding all four rounds' account
        store = folder / "site-state" / f"site-{site}"
        assert [p.name for p in store.iterdir()] == [f"{run_key}.safetensors"]
        kept = SiteStateStore(store).load(run_key)
        assert kept.trained_rounds == [1, 2, 3, 4]
        assert kept.ledger.epsilon(1e-5) == pytest.approx(expected["epsilon-per-site"][str(site)], rel=1e-9)


def test_a_site_that_crashes_from_round_2_does_not_stop_the_run(run_federation):
    folder = run_federation(3, "num-server-rounds=3 data.num-train=300 data.num-test=60 data.size=32 "
                              "train.local-epochs=1 model.adapter='linear' model.head-init='random' strategy.min-sites=2 "
                              "faults.site=2 faults.kind='crash' faults.from-round=2")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 3 and {"accuracy", "macro-f1"} <= set(summary["final"])
    assert summary["sites-per-round"] == {"1": ["0", "1", "2"], "2": ["0", "1"], "3": ["0", "1"]}
    assert any("site 2 crashes in round 2" in failure for failure in summary["failures"])


def test_a_multitask_federation_trains_and_reports_each_task_among_its_own_sites(run_federation):
    folder = run_federation(5, "num-server-rounds=2 data.num-train=500 data.num-test=100 data.size=32 "
                              "train.local-epochs=1 model.adapter='linear' model.head-init='ridge' "
                              "multitask.site-tasks='region,region,lesions,lesions,-'")
    tasks = json.loads((folder / "tasks.json").read_text())["groups"]
    # the region head starts from the closed form of its own two sites' sums; the decoder from its initialisation
    closed_form = json.loads((folder / "summary.json").read_text())["closed-form"]
    assert set(closed_form) == {"region"} and set(closed_form["region"]["statistics-bytes-per-site"]) == {"site 0", "site 1"}
    assert {name: g["sites"] for name, g in tasks.items()} == {"lesions": [2, 3], "region": [0, 1]}
    summary = json.loads((folder / "summary.json").read_text())
    sizes = summary["task-adapter-bytes"]
    assert sizes["region"] == (192 * 4 + 4) * 4  # the linear head; the decoder is far larger
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]  # round 0: the closed form, scored like any round
    for line in lines:
        assert set(line["sites"]) == {"0", "1", "2", "3"}  # site 4 sat the run out
        assert {"region/macro-f1", "lesions/dice", "multitask-score"} <= set(line["global"]) & set(line["federated-val"])
        for site, entry in line["sites"].items() if line["round"] > 0 else ():
            task = "region" if site in ("0", "1") else "lesions"
            assert sizes[task] <= entry["bytes-up"] < sizes[task] + 4096  # only its own task's adapter
            assert ("macro-f1" if task == "region" else "dice") in entry["evaluate"]
    assert {"region/macro-f1", "lesions/dice"} <= set(summary["final-worst-site"])
    assert summary["best"]["selected-by"] == "federated-val multitask-score"


def test_a_captioning_group_trains_beside_a_classification_group(run_federation):
    folder = run_federation(4, "num-server-rounds=2 data.num-train=320 data.num-test=40 data.size=32 "
                              "train.local-epochs=1 model.adapter='linear' model.head-init='random' "
                              "model.caption-width=32 multitask.site-tasks='region,region,captions,captions'")
    tasks = json.loads((folder / "tasks.json").read_text())["groups"]
    assert {name: g["sites"] for name, g in tasks.items()} == {"captions": [2, 3], "region": [0, 1]}
    summary = json.loads((folder / "summary.json").read_text())
    assert {"region/macro-f1", "captions/cider", "captions/bleu-4"} <= set(summary["final"])
    assert summary["task-adapter-bytes"]["region"] == (192 * 4 + 4) * 4
