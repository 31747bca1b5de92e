"""The central encoder probes: three macro-F1 scores per encoder, and a clear error for a missing file."""

import importlib.util
import json
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "simulations" / "studies" / "probe_encoders.py"


def load_study():
    """The study is a script in simulations/studies/ (kept and runnable, not installed): load it by its path."""
    spec = importlib.util.spec_from_file_location("probe_encoders", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main = load_study().main


def test_probes_score_each_named_encoder_and_append_json_lines(tmp_path, capsys):
    out = tmp_path / "probes.jsonl"
    assert main(["random init=", "data.size=32", "data.num-train=120", "data.num-test=60", "--json", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["encoder"] == "random init" and row["size"] == 32
    assert all(0.0 <= row[m] <= 1.0 for m in ("lr-z", "knn", "style"))
    assert "| random init |" in capsys.readouterr().out


def test_a_missing_weights_file_is_named_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([f"mine={tmp_path / 'nope.safetensors'}", "data.size=32"])
    assert "nope.safetensors" in capsys.readouterr().err
