"""Cross-site evaluation (run.cross-site): every site's final model and the global one scored on
every site's validation split, in a whole run in one process. Each site's own model on its own
split must score what that site reported for it in the last round, which ties the matrix to the
numbers the run already trusts."""

import json

import pytest

from omnirad.config import ConfigError
from omnirad_fl.simulations.report import write_run_report

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "num-server-rounds": 1,
         "train.local-epochs": 1}


def finished(run):
    summary = json.loads((run / "summary.json").read_text())
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return summary, last


def test_fedper_sites_models_on_every_site(run_in_process):
    """One imaging style per site, FedPer with local fine-tuning: a model per site, its fine-tuned
    copy, no global model (FedPer's has no trained output layer)."""
    run = run_in_process(3, {**SMALL, "data.partition": "modality", "strategy.name": "fedper",
                             "model.adapter": "mlp", "personalization.finetune-epochs": 1})
    summary, last = finished(run)
    cross = summary["cross-site"]
    assert cross["metric"] == "macro-f1" and cross["sites"] == ["0", "1", "2"]
    assert cross["models"] == ["site 0", "site 0 fine-tuned", "site 1", "site 1 fine-tuned", "site 2",
                               "site 2 fine-tuned"]
    for site in cross["sites"]:
        reported = last["sites"][site]["evaluate"]  # the site's own scores of its models, in the last round
        own = cross["matrix"][f"site {site}"][site]
        assert own["accuracy"] == pytest.approx(reported["accuracy"], abs=1e-6)
        assert own["macro-f1"] == pytest.approx(reported["macro-f1"], abs=1e-6)
        tuned = cross["matrix"][f"site {site} fine-tuned"][site]
        assert tuned["accuracy"] == pytest.approx(reported["finetuned-accuracy"], abs=1e-6)
        assert set(cross["matrix"][f"site {site}"]) == {"0", "1", "2"}  # scored on every site's split
        others = [cross["matrix"][f"site {o}"][site]["macro-f1"] for o in cross["sites"] if o != site]
        assert cross["by-site"][site]["others-mean"] == pytest.approx(sum(others) / len(others))
    assert (run / "cross-site.png").stat().st_size > 0
    report = write_run_report(run).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| site 1 |"))
    assert f"{cross['matrix']['site 1']['1']['macro-f1']:.3f}" == row.split("|")[3].strip()  # site 1 on its own split
    assert "![cross-site evaluation](cross-site.png)" in report


def test_the_global_model_row_is_what_each_site_scored(run_in_process):
    """run.cross-site=on for a plain FedAvg run: the global model's row equals each site's last
    evaluation of it, and no site sends tensors of its own."""
    run = run_in_process(2, {**SMALL, "data.partition": "iid", "run.cross-site": "on"})
    summary, last = finished(run)
    cross = summary["cross-site"]
    assert cross["models"] == ["global"]
    for site in ("0", "1"):
        assert cross["matrix"]["global"][site]["accuracy"] == pytest.approx(
            last["sites"][site]["evaluate"]["accuracy"], abs=1e-6)


def test_off_by_default_for_a_plain_run_and_refused_when_misspelt(run_in_process):
    run = run_in_process(2, {**SMALL, "data.partition": "iid"})
    summary, _ = finished(run)
    assert "cross-site" not in summary and not (run / "cross-site.png").exists()
    with pytest.raises(ConfigError, match="run.cross-site"):
        run_in_process(2, {**SMALL, "data.partition": "iid", "run.cross-site": "yes"})


def test_auto_never_sends_a_hospitals_own_layers_without_its_operators_choice():
    from omnirad.configure import load_config
    from omnirad_fl.server.cross_site import cross_site_on
    from omnirad_fl.server.phases import ServerRun

    deployed = {"data.dataset": "deployment", "data.num-sites": 2, "data.num-classes": 3, "strategy.name": "fedper"}
    assert not cross_site_on(ServerRun(None, load_config(deployed)))
    assert cross_site_on(ServerRun(None, load_config({**deployed, "run.cross-site": "on"})))
    assert cross_site_on(ServerRun(None, load_config({"strategy.name": "fedper"})))  # simulated: auto runs it
