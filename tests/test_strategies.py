"""Strategies and update validation, driven with mock replies and no network (as Flower tests them)."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategies

from omnirad.config import ConfigError, FaultsConfig, TrainConfig
from omnirad.configure import load_config
from omnirad.faults import misbehave
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies import STRATEGIES, build_strategy, flower_strategy
from tests.conftest import answering

GLOBAL = {"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}


pytestmark = pytest.mark.usefixtures("task_identity", "mock_round_token")


def reply(site: int, state: dict, n: int = 100) -> Message:
    metrics = MetricRecord({"num-examples": n, "site-id": site, "train-loss": 0.5})
    return Message(content=answering(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})), dst_node_id=0,
                   message_type=MessageType.TRAIN)


def honest(site: int, value: float = 1.0) -> Message:
    return reply(site, {"fc.weight": torch.full((4, 8), value + 0.01 * site), "fc.bias": torch.full((4,), value)})


def setup(tmp_path, start_round, sites: int = 5, **overrides):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": sites, **overrides})
    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, folder)
    start_round(strategy, 1, GLOBAL, sites)
    return folder, strategy


def test_every_configured_name_builds_flowers_own_class(tmp_path):
    for name, spec in STRATEGIES.items():
        cfg = load_config({"run.output-dir": str(tmp_path), "strategy.name": name})
        strategy = flower_strategy(build_strategy(cfg, RunFolder.create(cfg)))
        assert type(strategy) is spec.flower_class and spec.flower_class.__module__.startswith("flwr.serverapp.strategy")
    with pytest.raises(ConfigError, match="strategy.name"):
        load_run_config({"strategy.name": "fedsomething"})


def test_strategy_parameters_reach_flower(tmp_path):
    cfg = load_config({"run.output-dir": str(tmp_path), "strategy.name": "fedtrimmedavg", "strategy.trim-beta": 0.3})
    assert flower_strategy(build_strategy(cfg, RunFolder.create(cfg))).beta == 0.3
    cfg = load_config({"run.output-dir": str(tmp_path), "strategy.name": "fedprox", "strategy.proximal-mu": 0.5})
    assert flower_strategy(build_strategy(cfg, RunFolder.create(cfg))).proximal_mu == 0.5
    cfg = load_config({"run.output-dir": str(tmp_path), "strategy.name": "fedadam", "strategy.eta": 0.05})
    assert isinstance(flower_strategy(build_strategy(cfg, RunFolder.create(cfg))), flwr_strategies.FedAdam)


def test_fedprox_sends_mu_to_the_sites(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "strategy.name": "fedprox", "strategy.proximal-mu": 0.5,
                       "data.num-sites": 2})
    messages = start_round(build_strategy(cfg, RunFolder.create(cfg)), 1, GLOBAL, 2)
    assert [m.content["config"]["proximal-mu"] for m in messages] == [0.5, 0.5]


def test_a_nan_update_is_left_out_and_the_round_goes_on(tmp_path, start_round):
    folder, strategy = setup(tmp_path, start_round)
    nan = reply(4, {"fc.weight": torch.full((4, 8), float("nan")), "fc.bias": torch.zeros(4)})
    arrays, metrics = strategy.aggregate_train(1, [honest(s) for s in range(4)] + [nan])
    assert np.isfinite(arrays["fc.weight"].numpy()).all()
    np.testing.assert_allclose(arrays["fc.bias"].numpy(), 1.0)
    assert metrics["rejected-updates"] == 1 and metrics["valid-updates"] == 4
    line = folder.end_round(1, {})
    assert "NaN" in line["sites"]["4"]["rejected"] and line["rejected"] == [f"site 4: {line['sites']['4']['rejected']}"]


def test_an_update_scaled_by_100_is_left_out_by_the_norm_ratio(tmp_path, start_round):
    _, strategy = setup(tmp_path, start_round)
    scaled = honest(4, value=100.0)
    arrays, metrics = strategy.aggregate_train(1, [honest(s) for s in range(4)] + [scaled])
    np.testing.assert_allclose(arrays["fc.bias"].numpy(), 1.0)
    assert metrics["rejected-updates"] == 1


def test_with_clipping_an_oversized_update_is_kept_at_the_median_norm_in_its_own_direction(tmp_path, start_round):
    _, strategy = setup(tmp_path, start_round, **{"strategy.clip-updates": True})
    honest_replies = [honest(s) for s in range(4)]
    direction = {"fc.weight": torch.full((4, 8), -2.0), "fc.bias": torch.full((4,), -2.0)}
    scaled = reply(4, {k: 100 * v for k, v in direction.items()})  # a site whose update came out 100x too large
    def norm_of(message: Message) -> float:
        return float(np.sqrt(sum(np.sum(message.content["arrays"][k].numpy().astype(np.float64) ** 2) for k in GLOBAL)))

    median = float(np.median([norm_of(m) for m in [*honest_replies, scaled]]))  # the global model is zero
    arrays, metrics = strategy.aggregate_train(1, [*honest_replies, scaled])
    assert metrics["rejected-updates"] == 0 and metrics["valid-updates"] == 5
    kept = scaled.content["arrays"]  # clipped in place before averaging
    assert norm_of(scaled) == pytest.approx(median, rel=1e-5)
    assert np.all(kept["fc.bias"].numpy() < 0) and kept["fc.bias"].numpy().dtype == np.float32  # its direction
    assert float(arrays["fc.bias"].numpy()[0]) == pytest.approx((4 * 1.0 + kept["fc.bias"].numpy()[0]) / 5)


def test_an_absolute_norm_bound_applies_too(tmp_path, start_round):
    _, strategy = setup(tmp_path, start_round, sites=2, **{"strategy.max-update-norm": 3.0, "strategy.max-norm-ratio": 0.0})
    # site 0's update norm: sqrt(32 * 1 + 4 * 1) = 6 > 3; site 1's: sqrt(36 * 0.01) = 0.6
    small = reply(1, {"fc.weight": torch.full((4, 8), 0.1), "fc.bias": torch.full((4,), 0.1)})
    arrays, metrics = strategy.aggregate_train(1, [reply(0, {"fc.weight": torch.ones(4, 8), "fc.bias": torch.ones(4)}), small])
    np.testing.assert_allclose(arrays["fc.bias"].numpy(), 0.1)
    assert metrics["rejected-updates"] == 1


@pytest.mark.parametrize(("state", "reason"), [
    ({"fc.weight": torch.zeros(4, 8)}, "unexpected keys"),
    ({"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4), "extra": torch.zeros(1)}, "unexpected keys"),
    ({"fc.weight": torch.zeros(8, 4), "fc.bias": torch.zeros(4)}, "expected float32[4, 8]"),
    ({"fc.weight": torch.zeros(4, 8, dtype=torch.float64), "fc.bias": torch.zeros(4)}, "expected float32"),
    ({"fc.weight": torch.zeros(4, 8), "fc.bias": torch.tensor([0, 0, float("inf"), 0])}, "NaN or Inf"),
])
def test_malformed_updates_are_left_out_with_their_reason(tmp_path, start_round, state, reason):
    folder, strategy = setup(tmp_path, start_round, sites=3)
    _, metrics = strategy.aggregate_train(1, [honest(0), honest(1), reply(2, state)])
    assert metrics["rejected-updates"] == 1
    assert reason in folder.end_round(1, {})["sites"]["2"]["rejected"]


def test_too_few_valid_updates_leave_the_global_model_unchanged(tmp_path, start_round):
    _, strategy = setup(tmp_path, start_round, sites=3, **{"strategy.min-valid-updates": 2})
    nan = {"fc.weight": torch.full((4, 8), float("nan")), "fc.bias": torch.zeros(4)}
    arrays, metrics = strategy.aggregate_train(1, [honest(0), reply(1, nan), reply(2, nan)])
    assert arrays is None  # Flower keeps the previous global arrays
    assert metrics["valid-updates"] == 1 and metrics["rejected-updates"] == 2


def test_without_validation_plain_fedavg_is_poisoned_by_one_nan_site(tmp_path, start_round):
    _, strategy = setup(tmp_path, start_round, **{"strategy.validate-updates": False})
    nan = reply(4, {"fc.weight": torch.full((4, 8), float("nan")), "fc.bias": torch.zeros(4)})
    arrays, _ = strategy.aggregate_train(1, [honest(s) for s in range(4)] + [nan])
    assert np.isnan(arrays["fc.weight"].numpy()).all()


def test_krum_and_median_resist_a_scaled_update_even_without_validation(tmp_path, start_round):
    for name in ("krum", "fedmedian"):
        _, strategy = setup(tmp_path, start_round, **{"strategy.validate-updates": False, "strategy.name": name})
        arrays, _ = strategy.aggregate_train(1, [honest(s) for s in range(4)] + [honest(4, value=100.0)])
        assert np.abs(arrays["fc.bias"].numpy() - 1.0).max() < 1e-6, name


def test_a_faulty_site_scales_its_update_or_sends_nan():
    start = {"w": torch.ones(3)}
    trained = {"w": torch.full((3,), 2.0)}
    assert misbehave(FaultsConfig(site=-1), 0, start, trained) is trained
    torch.testing.assert_close(misbehave(FaultsConfig(site=0, kind="scale", scale=100.0), 0, start, trained)["w"], torch.full((3,), 101.0))
    assert torch.isnan(misbehave(FaultsConfig(site=0, kind="nan"), 0, start, trained)["w"]).all()


def test_the_proximal_term_keeps_a_site_closer_to_the_global_model():
    from omnirad.tasks import MULTI_CLASS, TaskSpec
    from omnirad.training import train_model

    features = torch.randn(64, 8)
    labels = np.random.default_rng(0).integers(0, 3, 64)
    task = TaskSpec(MULTI_CLASS, ("a", "b", "c"))
    drift = {}
    for mu in (0.0, 10.0):
        model = torch.nn.Linear(8, 3)
        torch.nn.init.zeros_(model.weight)
        train_model(model, features, labels, task, train=TrainConfig(local_epochs=5, lr=0.05, batch_size=16, weight_decay=0.0),
                    seed=0, proximal_mu=mu)
        drift[mu] = float(model.weight.detach().norm())
    assert drift[10.0] < 0.7 * drift[0.0]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_aggregates_a_round_of_mock_replies(tmp_path, start_round, name):
    _, strategy = setup(tmp_path, start_round, **{"strategy.name": name})
    arrays, metrics = strategy.aggregate_train(1, [honest(s) for s in range(5)])
    assert arrays["fc.weight"].numpy().shape == (4, 8) and np.isfinite(arrays["fc.weight"].numpy()).all()
    assert 0.0 < float(arrays["fc.bias"].numpy().mean()) <= 1.0 + 1e-6  # between the global 0 and the sites' 1
    assert metrics["valid-updates"] == 5


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_server_optimisers_keep_float32_so_later_rounds_are_not_refused(tmp_path, start_round, name):
    """Flower's FedAdam returns float64 after a round; validation would then refuse every float32 reply."""
    folder, strategy = setup(tmp_path, start_round, sites=3, **{"strategy.name": name})
    arrays, _ = strategy.aggregate_train(1, [honest(s) for s in range(3)])
    assert {arrays[k].numpy().dtype for k in arrays} == {np.dtype("float32")}
    start_round(strategy, 2, arrays.to_torch_state_dict(), 3)
    arrays, metrics = strategy.aggregate_train(2, [honest(s, value=1.5) for s in range(3)])
    assert metrics["rejected-updates"] == 0 and metrics["valid-updates"] == 3
    assert {arrays[k].numpy().dtype for k in arrays} == {np.dtype("float32")}


def test_central_dp_wraps_the_strategy_with_flowers_server_side_clipping(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 3,
                       "privacy.central-noise-multiplier": 0.5, "privacy.central-clipping-norm": 0.1})
    strategy = build_strategy(cfg, RunFolder.create(cfg))
    assert isinstance(strategy, flwr_strategies.DifferentialPrivacyServerSideFixedClipping)
    start_round(strategy, 1, GLOBAL, 3)
    arrays, _ = strategy.aggregate_train(1, [honest(s, value=5.0) for s in range(3)])
    # every update (norm about 5 * 6) is clipped to 0.1 before averaging; then noise of std 0.5 * 0.1 / 3
    update = np.concatenate([arrays[k].numpy().ravel() for k in arrays])
    assert np.linalg.norm(update) < 0.1 + 4 * 0.5 * 0.1 / 3 * np.sqrt(update.size)
    assert not np.allclose(arrays["fc.bias"].numpy(), arrays["fc.bias"].numpy()[0])  # noise differs per value


def test_a_round_starts_without_a_site_that_is_down_when_min_sites_allows(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 4, "strategy.min-sites": 3})
    messages = start_round(build_strategy(cfg, RunFolder.create(cfg)), 1, GLOBAL, 3)  # 3 of 4 connected
    assert len(messages) == 3
    with pytest.raises(ConfigError, match="strategy.min-sites"):
        load_config({"data.num-sites": 4, "strategy.min-sites": 5})
