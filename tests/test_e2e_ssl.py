"""Federated self-supervised pretraining as a whole run, then adapters on the result: the server's
phases against the real ClientApp in this process (``run_in_process``, conftest.py). These ran
through ``flwr run`` before; what they assert is the pretraining phase, its site handler, what it
sends and writes, and the adapter phase that follows, which is the same code in both."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnirad.encoders import create_encoder, weights_fingerprint
from omnirad_fl.simulations.report import write_run_report

pytestmark = pytest.mark.slow


def test_one_tiny_pretraining_round_then_a_standardised_probe_on_the_pretrained_encoder(tmp_path, run_in_process):
    encoder_file = tmp_path / "ssl-encoder.safetensors"
    folder = run_in_process(2, f"ssl.rounds=1 ssl.objective='dino' ssl.half-precision=true "
                               f"ssl.batch-size=16 ssl.save-encoder='{encoder_file}' num-server-rounds=1 "
                               "data.num-train=64 data.num-test=32 data.size=32 model.adapter='linear' "
                               "model.standardise-features=true train.local-epochs=1")
    (line,) = [json.loads(x) for x in encoder_file.with_suffix(".jsonl").read_text().splitlines()]
    assert line["round"] == 1 and line["sites"] == 2 and line["loss"] > 0 and line["images"] > 0
    # float16 both ways: half the float32 bytes (the integer-free ViT and heads), student and teacher down
    assert line["bytes-up"] == pytest.approx(line["bytes-up-float32"] / 2, rel=1e-3)
    assert line["bytes-down"] == pytest.approx(2 * line["bytes-up"], rel=1e-3)
    pretrained = create_encoder("vit-tiny", str(encoder_file), 32)
    random_init = create_encoder("vit-tiny", "", 32)
    assert not torch.equal(pretrained.vit.cls_token, random_init.vit.cls_token)
    # the adapter phase ran on the pretrained encoder: its configuration and the sites' checks agree
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["weights"] == str(encoder_file) and summary["rounds"] == 1
    assert set(summary["sites-per-round"]["1"]) == {"0", "1"} and not summary.get("failures")
    assert f"model.weights: {encoder_file}" in (folder / "config.yaml").read_text()
    assert weights_fingerprint(str(encoder_file)) != "random-init"
    # the probe read features standardised with statistics pooled from both sites, kept for the final head
    assert summary["standardise-features"] is True
    pooled = load_file(folder / "feature-standardisation.safetensors")
    assert pooled["mean"].shape == pooled["std"].shape == (pretrained.num_features,) and (pooled["std"] > 0).all()
    assert "confusion.png" in write_run_report(folder).read_text()  # the final head scores again from the folder


def test_pretraining_alone_writes_the_encoder_and_no_adapter_run(tmp_path, run_in_process):
    encoder_file = Path(tmp_path) / "mae.safetensors"
    flwr_runs = tmp_path / "runs"
    assert run_in_process(2, f"ssl.rounds=2 ssl.objective='mae' ssl.save-encoder='{encoder_file}' "
                             "num-server-rounds=0 data.num-train=48 data.size=32", tmp_path) is None  # no run folder
    lines = [json.loads(x) for x in encoder_file.with_suffix(".jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2] and lines[0]["bytes-up"] == lines[0]["bytes-up-float32"]
    assert lines[0]["bytes-down"] == lines[0]["bytes-up"]  # MAE has no teacher to send
    create_encoder("vit-tiny", str(encoder_file), 32)
    assert not flwr_runs.exists() or not any(flwr_runs.iterdir())
