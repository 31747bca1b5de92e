"""The sweep's bookkeeping: which number goes in which column, means over seeds, resuming."""

import json

import pytest

from omnirad.errors import ConfigError
from omnirad_fl.simulations.sweep import done_keys, federated_row, merged, table, view_stats


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
    # the round a run would ship: chosen on the sites' validation splits, scored on the test set
    best = {"round": 3, "selected-by": "federated-val macro-f1", "global": {"accuracy": 0.62}}
    assert federated_row(summary("none", {"accuracy": 0.5}, {}, {}, best=best))["selected"] == {"accuracy": 0.62}
    assert plain["selected"] == {}


def row(seed: int, variant: str, value: float) -> dict:
    return {"shared": "", "split": "iid", "seed": seed, "variant": variant, "global": {"macro-f1": value},
            "worst-site": {"macro-f1": value - 0.1}, "personalized": {}, "rejected": 1}


def test_means_and_spreads_over_seeds(tmp_path):
    rows = [row(0, "fedavg", 0.5), row(1, "fedavg", 0.7), row(0, "fedper", float("nan"))]
    stats = view_stats(rows, "macro-f1")
    assert stats["iid"]["fedavg"]["global"] == pytest.approx((0.6, 0.1))
    assert "global" not in stats["iid"]["fedper"]  # NaN (no global model) is left out, not averaged
    text = table(rows, "macro-f1")
    assert "| fedavg | 0.600 ± 0.100 | - | 0.500 ± 0.100 | - | 2 |" in text and "| fedper | - |" in text
    out = tmp_path / "sweep.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert done_keys(out) == {("", "iid", 0, "fedavg"), ("", "iid", 1, "fedavg"), ("", "iid", 0, "fedper")}


def test_rounds_to_target_counts_rounds_and_bytes_until_a_pooled_score_minus_the_margin(tmp_path):
    from omnirad_fl.simulations.rounds_to_target import report

    def run(name: str, accuracies: list[float]) -> str:
        folder = tmp_path / name
        folder.mkdir()
        lines = [{"round": r, "global": {"accuracy": a}, "sites": {"0": {}, "1": {}}, "bytes-up": 2048, "bytes-down": 4096}
                 for r, a in enumerate(accuracies)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return str(folder)

    pooled = "pooled (central)"
    rows = [{"split": "iid", "seed": 0, "variant": f"{pooled}: ridge", "reference": pooled, "global": {"accuracy": 0.80}},
            {"split": "iid", "seed": 0, "variant": f"{pooled}: fedavg", "reference": pooled, "global": {"accuracy": 0.70}},
            {"split": "iid", "seed": 0, "variant": "ridge", "reference": "", "run-folder": run("a", [0.795, 0.80])},
            {"split": "iid", "seed": 0, "variant": "fedavg", "reference": "", "run-folder": run("b", [0.5, 0.7, 0.78, 0.791])}]
    text = report(rows, "accuracy", 0.01)
    assert "best pooled: ridge, 0.800" in text
    # ridge: round 0 reaches its twin (0.79) and the best pooled; one site's share of 2 KiB up each round
    assert "| ridge | 0.800 | 1 of 1 | 0.0 | 1 | 1 of 1 | 0.0 | 1 | 2 |" in text
    # fedavg: its own twin (0.69) in round 1, the best pooled in round 3
    assert "| fedavg | 0.700 | 1 of 1 | 1.0 | 2 | 1 of 1 | 3.0 | 4 | 4 |" in text


def test_side_by_side_puts_each_variant_next_to_its_pooled_twin():
    from omnirad_fl.simulations.side_by_side import report

    def row(seed, variant, reference, value, selected=None):
        return {"split": "iid", "seed": seed, "variant": f"{reference}: {variant}" if reference else variant,
                "reference": reference, "global": {"macro-f1": value}, "worst-site": {"macro-f1": value - 0.2},
                **({"selected": {"macro-f1": selected}} if selected is not None else {})}

    rows = [row(s, v, ref, value + 0.01 * s, sel) for s in (0, 1) for v, ref, value, sel in (
        ("ridge", "pooled (central)", 0.80, None), ("ridge", "local only", 0.60, None), ("ridge", "", 0.80, 0.80),
        ("fedavg", "pooled (central)", 0.70, None), ("fedavg", "local only", 0.50, None), ("fedavg", "", 0.55, 0.6))]
    text = report(rows, "macro-f1")
    assert "| ridge | 0.805 ± 0.005 * | 0.605 ± 0.005 | 0.805 ± 0.005 | 0.800 ± 0.000 | 0.605 ± 0.005 | +0.000 |" in text
    assert "| fedavg | 0.705 ± 0.005 | 0.505 ± 0.005 | 0.555 ± 0.005 | 0.600 ± 0.000 | 0.355 ± 0.005 | -0.150 |" in text


def test_overrides_that_are_not_key_value_pairs_are_refused_by_their_text():
    assert merged("model.adapter='mlp'", "model.adapter='linear'") == 'model.adapter="linear"'  # the later key wins
    with pytest.raises(ConfigError, match="label cannot hold one"):
        merged(" ridge+ft:model.adapter='linear'")  # what a label with a ':' leaves of a variant
