import tomllib
from pathlib import Path

import pytest

from omnirad.config import ConfigError, flat_defaults, to_yaml
from omnirad.configure import load_config

PROJECT = Path(__file__).resolve().parents[1]


def test_defaults_load_and_match_pyproject():
    cfg = load_config({})
    assert cfg.data.dataset == "embedded" and cfg.model.encoder == "vit-tiny"
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]

    def flatten(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    assert flatten(declared) == flat_defaults()


def test_flat_kebab_keys_reach_snake_case_fields():
    cfg = load_config({"data.num-sites": 3, "train.local-epochs": 2, "model.adapter": "mlp", "run.output-dir": "/tmp/x"})
    assert (cfg.data.num_sites, cfg.train.local_epochs, cfg.model.adapter, cfg.run.output_dir) == (3, 2, "mlp", "/tmp/x")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown configuration key 'data.num_sites'"):
        load_config({"data.num_sites": 3})


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("data.size", "big", "data.size"),
        ("num-server-rounds", -1, "num-server-rounds"),
        ("data.alpha", 0.0, "data.alpha"),
        ("model.encoder", "vit-huge", "one of omnirad-small"),
        ("model.adapter", "lora2", "model.adapter"),
        ("data.partition", "random", "data.partition"),
        ("strategy.fraction-train", 1.5, "strategy.fraction-train"),
        ("data.size", 16, "from 28 to 224"),
    ],
)
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_config({key: value})
    assert key in str(err.value) and fragment in str(err.value)


def test_yaml_round_trip_uses_flat_keys():
    text = to_yaml(load_config({"data.alpha": 0.1}))
    assert "data.alpha: 0.1" in text and "num-server-rounds: 20" in text


def test_unreadable_override_values_are_named_whatever_yaml_finds():
    from omnirad.config import parse_overrides

    for pair, problem in (("data.alpha=[1", "expected"), ("run.name=\x07", "unacceptable character")):
        with pytest.raises(ConfigError, match=f"override .*{problem}"):
            parse_overrides([pair])


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "privacy.delta=nan", "strategy.eta=-inf",
                                      "strategy.round-timeout=inf", "data.alpha=inf"])
def test_a_non_finite_float_is_refused_by_key(override):
    from omnirad.config import parse_overrides

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}'.*a finite number"):
        load_config(parse_overrides([override]))


@pytest.mark.parametrize(("key", "value"), [("run.seed", 2**80), ("run.seed", 2**32), ("run.seed", -1),
                                             ("run.name", "x" * 300), ("run.name", "../outside"), ("run.name", "a/b"),
                                             ("run.name", "a/../../b"), ("run.name", ".hidden")])
def test_a_seed_out_of_range_or_a_run_name_that_is_not_one_folder_is_refused(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config({key: value})


def test_usual_seeds_and_run_names_pass():
    cfg = load_config({"run.seed": 2**32 - 1, "run.name": "fedprox_alpha=0.1,v2.1+lora"})
    assert cfg.run.seed == 2**32 - 1
