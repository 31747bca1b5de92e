"""The sweep's bookkeeping: which number goes in which column, means over seeds, resuming."""

import json

import pytest

from omnirad_fl.simulations.sweep import done_keys, federated_row, table, view_stats


def summary(personalization: str, final: dict, val: dict, worst: dict, **extra) -> dict:
    return {"personalization": personalization, "final": final, "final-federated-val": val,
            "final-worst-site": worst, "bytes-up-per-site-round": 10.0, "wall-seconds": 1.0, "run-folder": "x", **extra}


def test_personalized_is_local_finetuning_for_a_global_model_and_the_own_model_under_fedper():
    plain = federated_row(summary("none", {"accuracy": 0.5}, {"accuracy": 0.55, "finetuned-accuracy": 0.7},
                                  {"accuracy": 0.4, "finetuned-accuracy": 0.6}))
    assert plain["personalized"] == {"accuracy": 0.7} and plain["worst-site"] == {"accuracy": 0.4}
    fedper = federated_row(summary("fedper", {}, {"accuracy": 0.65, "finetuned-accuracy": 0.7}, {"accuracy": 0.5},
                                   **{"epsilon-per-site": {"0": 1.0, "1": 2.5}}))
    assert fedper["personalized"] == {"accuracy": 0.65} and fedper["global"] == {} and fedper["epsilon"] == 2.5


def row(seed: int, variant: str, value: float) -> dict:
    return {"shared": "", "split": "iid", "seed": seed, "variant": variant, "global": {"macro-f1": value},
            "worst-site": {"macro-f1": value - 0.1}, "personalized": {}, "rejected": 1}


def test_means_and_spreads_over_seeds(tmp_path):
    rows = [row(0, "fedavg", 0.5), row(1, "fedavg", 0.7), row(0, "fedper", float("nan"))]
    stats = view_stats(rows, "macro-f1")
    assert stats["iid"]["fedavg"]["global"] == pytest.approx((0.6, 0.1))
    assert "global" not in stats["iid"]["fedper"]  # NaN (no global model) is left out, not averaged
    text = table(rows, "macro-f1")
    assert "| fedavg | 0.600 ± 0.100 | 0.500 ± 0.100 | - | 2 |" in text and "| fedper | - |" in text
    out = tmp_path / "sweep.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert done_keys(out) == {("", "iid", 0, "fedavg"), ("", "iid", 1, "fedavg"), ("", "iid", 0, "fedper")}
