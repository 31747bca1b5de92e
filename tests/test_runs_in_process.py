"""Whole runs of the features, in this process: the ServerApp's phases against the real ClientApp
(``run_in_process`` in conftest.py, ``simulations.in_process``), one Flower ``Context`` per site kept
across messages as in Flower's simulation, then the run folder's contents.

These tests ran through ``flwr run`` before; what they assert is the feature (its phases, site
handlers, what crosses the network, what the run folder reports), which is the same code in both.
Flower's transport, the simulation runtime and resuming a stopped federation are tested through
``flwr run`` in test_e2e_flwr_run.py, deployment in test_e2e_deployment.py."""

import json
from pathlib import Path

import numpy as np
import pytest

from omnirad.configure import load_config
from omnirad.models import new_model

pytestmark = pytest.mark.slow


def test_each_site_reads_its_own_file(tmp_path, run_in_process):
    """A natural split: one MedMNIST-format file per hospital, and a test file for the server; the
    closed-form ridge head alone (0 rounds) and as round 0 of a 2-round run."""
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
    alone = run_in_process(2, f"{shared} num-server-rounds=0", tmp_path / "alone")
    folder = run_in_process(2, f"{shared} num-server-rounds=2", tmp_path / "rounds")
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


def test_federated_segmentation_with_the_decoder(run_in_process):
    folder = run_in_process(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                               "data.task='segmentation' model.adapter='decoder' train.local-epochs=2")
    summary = json.loads((folder / "summary.json").read_text())
    assert {"dice", "iou", "dice-with-background"} <= set(summary["final"])
    assert summary["best"]["selected-by"] == "federated-val dice"
    assert 0.0 < summary["final"]["dice"] <= 1.0


def test_federated_captioning_selects_by_cider_and_sends_only_the_decoder(run_in_process):
    folder = run_in_process(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                               "data.task='captioning' model.adapter='caption-decoder' "
                               "model.caption-width=32 train.local-epochs=2")
    summary = json.loads((folder / "summary.json").read_text())
    assert {"cider", "bleu-4", "rouge-l", "finding-accuracy"} <= set(summary["final"])
    assert summary["best"]["selected-by"] == "federated-val cider"
    decoder = new_model(load_config({"data.task": "captioning", "model.adapter": "caption-decoder", "data.size": 32,
                                     "model.caption-width": 32}))
    assert summary["adapter-parameter-bytes"] == 4 * sum(p.numel() for p in decoder.parameters())


def test_lora_sends_its_low_rank_factors_and_head_and_nothing_else(run_in_process):
    folder = run_in_process(2, "num-server-rounds=1 data.num-train=80 data.num-test=20 data.size=32 "
                               "model.adapter='lora' model.lora-rank=4 train.local-epochs=1")
    summary = json.loads((folder / "summary.json").read_text())
    # vit-tiny: 12 blocks x rank 4 x (qkv 192+576, proj 192+192, fc1 192+768, fc2 768+192) + linear head 192x4+4
    lora_and_head = (12 * 4 * (768 + 384 + 960 + 960) + 192 * 4 + 4) * 4
    assert summary["adapter-parameter-bytes"] == lora_and_head
    assert lora_and_head <= summary["bytes-up-per-site-round"] <= 1.05 * lora_and_head


def test_fedper_keeps_the_output_layer_at_the_sites(run_in_process):
    folder = run_in_process(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                               "strategy.name='fedper' model.adapter='mlp' train.local-epochs=2 "
                               "personalization.finetune-epochs=1")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["personalization"] == "fedper" and summary["final"] == {}  # no global head to test
    assert summary["local-parameter-bytes"] == (256 * 4 + 4) * 4  # the MLP head's last Linear
    assert summary["bytes-up-per-site-round"] < 1.01 * summary["adapter-parameter-bytes"]
    assert {"accuracy", "finetuned-accuracy"} <= set(summary["final-federated-val"])
    assert set(summary["final-worst-site"]) >= {"accuracy", "macro-f1"}


def test_spectral_alignment_gathers_a_bank_and_trains_prompts(run_in_process):
    folder = run_in_process(2, "num-server-rounds=2 data.num-train=160 data.num-test=40 data.size=32 "
                               "data.partition='modality' strategy.name='spectral' train.local-epochs=1")
    summary = json.loads((folder / "summary.json").read_text())
    assert 2 <= summary["spectral-bank-rows"] <= 2 * 4
    assert {"accuracy", "macro-f1"} <= set(summary["final"])
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    weights = [s["train"]["alignment-weight"] for s in lines[-1]["sites"].values()]
    assert len(weights) == 2 and all(1.0 <= w <= 2.0 for w in weights)


def test_a_site_that_crashes_from_round_2_does_not_stop_the_run(run_in_process):
    """The crashing site's ClientApp raises (faults.kind=crash); its error reply is what Flower's
    simulation delivers for a ClientApp that raises, and the run goes on with the other two."""
    folder = run_in_process(3, "num-server-rounds=3 data.num-train=300 data.num-test=60 data.size=32 "
                               "train.local-epochs=1 model.adapter='linear' model.head-init='random' "
                               "strategy.min-sites=2 faults.site=2 faults.kind='crash' faults.from-round=2")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 3 and {"accuracy", "macro-f1"} <= set(summary["final"])
    assert summary["sites-per-round"] == {"1": ["0", "1", "2"], "2": ["0", "1"], "3": ["0", "1"]}
    assert any("site 2 crashes in round 2" in failure for failure in summary["failures"])


def test_a_multitask_federation_trains_and_reports_each_task_among_its_own_sites(run_in_process):
    """With secure sums (privacy.secure-sum): the region group's statistics and temperature losses are
    secure sums among its own two sites, through the whole phase path."""
    folder = run_in_process(5, "num-server-rounds=2 data.num-train=500 data.num-test=100 data.size=32 "
                               "train.local-epochs=1 model.adapter='linear' model.head-init='ridge' "
                               "multitask.site-tasks='region,region,lesions,lesions,-' privacy.secure-sum=true")
    tasks = json.loads((folder / "tasks.json").read_text())["groups"]
    # the region head starts from the closed form of its own two sites' sums; the decoder from its initialisation
    closed_form = json.loads((folder / "summary.json").read_text())["closed-form"]
    assert set(closed_form) == {"region"} and set(closed_form["region"]["statistics-bytes-per-site"]) == {"site 0", "site 1"}
    report = json.loads((folder / "closed-form.json").read_text())["region"]
    assert report["secure-sum"] == {"sites": 2, "restarts": 0, "dropped-nodes": []} and report["logit-scale"] > 0
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


def test_a_captioning_group_trains_beside_a_classification_group(run_in_process):
    folder = run_in_process(4, "num-server-rounds=2 data.num-train=320 data.num-test=40 data.size=32 "
                               "train.local-epochs=1 model.adapter='linear' model.head-init='random' "
                               "model.caption-width=32 multitask.site-tasks='region,region,captions,captions'")
    tasks = json.loads((folder / "tasks.json").read_text())["groups"]
    assert {name: g["sites"] for name, g in tasks.items()} == {"captions": [2, 3], "region": [0, 1]}
    summary = json.loads((folder / "summary.json").read_text())
    assert {"region/macro-f1", "captions/cider", "captions/bleu-4"} <= set(summary["final"])
    assert summary["task-adapter-bytes"]["region"] == (192 * 4 + 4) * 4
