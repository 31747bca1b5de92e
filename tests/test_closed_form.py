"""Closed-form heads (``model.head-init``): the sums add up to the pooled solution exactly, whatever
the split; replies carry only the named sums and a malformed one is refused naming the site; DP
noises them and accounts for it. No network: sites are LocalSites, the grid a fake."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file
from sklearn.linear_model import Ridge

from omnirad.broadcast import Broadcast
from omnirad.closed_form import (
    FIRST_MOMENTS,
    FLOAT32_TOLERANCE,
    GRAM_UPPER,
    HEAD_INITS,
    ROOT_UPPER,
    SCALES,
    SITE_FLOAT32_CHECK,
    HeadStatistics,
    auto_head,
    class_means,
    closed_form_head,
    head_inputs,
    packed_size,
    ridge_solution,
    solve_deviation,
    statistics_bytes,
    statistics_targets,
)
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.models import encoder_for, new_model
from omnirad.multitask import declaration, group_sites, site_view, task_config, trained_task
from omnirad.privacy import PrivacyLedger, round_plan, statistics_noise
from omnirad.protocol import ARRAYS, METRICS, NUM_EXAMPLES, SITE_ID
from omnirad.site_cache import get_site
from omnirad.training import predict
from omnirad_fl.client import app as client_app
from omnirad_fl.client.closed_form import wire_arrays
from omnirad_fl.server import app as server_app  # noqa: F401 - the ServerApp's module registers every phase
from omnirad_fl.server.closed_form import FLOAT32_ROOT, closed_form_tasks, gather_statistics, pooled_statistics
from omnirad_fl.server.multitask import initial_record
from omnirad_fl.server.phases import ServerRun, run_phases
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.simulations.flower_local import instruction
from omnirad_fl.simulations.in_process import InProcessGrid
from omnirad_fl.simulations.report import write_run_report
from tests.conftest import QueryGrid

SMALL = {"data.num-train": 400, "data.num-test": 80, "data.size": 32, "data.num-sites": 4, "data.alpha": 0.1,
         "data.min-site-samples": 10, "model.head-init": "ridge", "model.adapter": "linear"}


def sites_and_pool(cfg):
    """Each site's statistics, and the statistics of every site's training data pooled."""
    sites = [get_site(cfg, site_id) for site_id in range(cfg.data.num_sites)]
    per_site = [site.head_statistics()[0] for site in sites]
    head = closed_form_head(new_model(cfg))
    pooled_x = head_inputs(head, torch.cat([s.train_set.inputs for s in sites]))
    pooled_y = statistics_targets(sites[0].task, np.concatenate([s.train_set.labels for s in sites]))
    spec = HEAD_INITS[cfg.model.head_init]
    return sites, per_site, HeadStatistics.of(pooled_x, pooled_y, with_gram=spec.with_gram)


@pytest.mark.parametrize(("adapter", "head_init"), [("linear", "ridge"), ("mlp", "ridge"), ("cosine", "ncm")])
def test_the_federated_closed_form_predicts_as_the_pooled_one(adapter, head_init):
    cfg = load_config({**SMALL, "model.adapter": adapter, "model.head-init": head_init})
    sites, per_site, pooled = sites_and_pool(cfg)
    assert len({len(s.train_set.labels) for s in sites}) > 1  # a skewed split, not equal shares
    summed = per_site[0]
    for stats in per_site[1:]:
        summed = summed + stats
    spec = HEAD_INITS[head_init]
    test_x = sites[0].val_set.inputs
    outputs = []
    for stats in (summed, pooled):
        model = new_model(cfg)
        closed_form_head(model).set_closed_form(*(t.float() for t in spec.solve(stats, cfg.model)), 7.0)
        outputs.append(predict(model, test_x))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=0)


def test_ridge_is_the_ridge_regression_scikit_learn_fits():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(200, 6)), rng.integers(0, 3, 200)
    y = np.eye(3)[labels]
    weight, bias = ridge_solution(HeadStatistics.of(torch.from_numpy(x), torch.from_numpy(y), with_gram=True), 2.5)
    reference = Ridge(alpha=2.5).fit(x, y)
    np.testing.assert_allclose(weight.numpy(), reference.coef_, atol=1e-10)
    np.testing.assert_allclose(bias.numpy(), reference.intercept_, atol=1e-10)
    means, _ = class_means(HeadStatistics.of(torch.from_numpy(x), torch.from_numpy(y), with_gram=False))
    np.testing.assert_allclose(means.numpy(), np.stack([x[labels == c].mean(0) for c in range(3)]), atol=1e-12)


def reply(site_id, arrays, num_examples):
    metrics = MetricRecord({NUM_EXAMPLES: float(num_examples), SITE_ID: float(site_id)})
    return RecordDict({ARRAYS: ArrayRecord({k: v for k, v in arrays.items()}), METRICS: metrics})


def test_the_server_adds_the_sites_sums_and_refuses_a_malformed_reply_naming_the_site(task_identity):
    cfg = load_config(SMALL)
    sites, per_site, pooled = sites_and_pool(cfg)
    answers = {100 + s.site_id: reply(s.site_id, st.to_arrays(), len(s.train_set.labels))
               for s, st in zip(sites, per_site, strict=True)}
    model, width = new_model(cfg), encoder_for(cfg).num_features
    summed, sent, epsilons = pooled_statistics(QueryGrid("head_statistics", answers), cfg, model, ConfigRecord(),
                                               feature_width=width)
    # the packed float64 triangle is the sites' Gram matrices exactly: the sum is the sites' sum, bit for bit
    direct = sum(per_site[1:], per_site[0])
    assert torch.equal(summed.gram, direct.gram) and torch.equal(summed.label_sums, direct.label_sums)
    assert all(torch.equal(a, b) for a, b in zip(ridge_solution(summed, 0.01), ridge_solution(direct, 0.01),
                                                  strict=True))
    torch.testing.assert_close(summed.gram, pooled.gram, rtol=1e-12, atol=1e-9)
    assert epsilons == {}  # no DP, nothing spent
    # the bytes each site sent are its reply's, measured: about half the reply with the full matrix
    assert sent == {f"site {s.site_id}": answers[100 + s.site_id][ARRAYS].count_bytes() for s in sites}
    full = {f"site {s.site_id}": ArrayRecord({**st.first_moments(), "gram": st.gram}).count_bytes()
            for s, st in zip(sites, per_site, strict=True)}
    assert all(sent[site] < 0.55 * full[site] for site in sent)

    broken = dict(per_site[2].to_arrays())
    for change, message in (({GRAM_UPPER: broken[GRAM_UPPER][:5]}, "'gram-upper' has shape"),
                            ({GRAM_UPPER: broken[GRAM_UPPER].float()}, "'gram-upper' is torch.float32"),
                            ({"extra": torch.zeros(1)}, "expected exactly"),
                            ({ROOT_UPPER: broken[GRAM_UPPER].float()}, "expected exactly"),  # two Gram matrices
                            ({"label-counts": broken["label-counts"] + 1}, "label counts"),
                            ({GRAM_UPPER: -broken[GRAM_UPPER]}, "positive semi-definite")):
        bad = {**answers, 102: reply(2, {**broken, **change}, len(sites[2].train_set.labels))}
        with pytest.raises(RuntimeError, match=rf"site 2 \(node 102\).*{message}"):
            pooled_statistics(QueryGrid("head_statistics", bad), cfg, model, ConfigRecord(), feature_width=width)
    lying = {**answers, 101: reply(1, per_site[1].to_arrays(), 3)}
    with pytest.raises(RuntimeError, match=r"site 1 \(node 101\).*the site reports 3"):
        pooled_statistics(QueryGrid("head_statistics", lying), cfg, model, ConfigRecord(), feature_width=width)


def predictions(stats, cfg, inputs):
    """The solved head's predictions x W^T + b, in float64."""
    weight, bias = HEAD_INITS[cfg.model.head_init].solve(stats, cfg.model)
    return inputs.double() @ weight.T + bias


def test_float32_statistics_solve_to_the_predictions_of_the_float64_pooled_twin(task_identity):
    """Random features (the MLP head's 512 hidden units) on a Dirichlet 0.1 split: every site's own
    check passes, so each sends the float32 root of its scatter, half the bytes of the float64
    triangle, and the server's solve predicts within 1e-4 of the pooled float64 twin on every
    site's validation images. Rounding the Gram matrices themselves to float32 would move them
    further than 1e-4: the root is what makes float32 exact enough."""
    flat = {**SMALL, "model.adapter": "mlp", "model.hidden-dim": 512}
    cfg = load_config(flat)
    sites, per_site, pooled = sites_and_pool(cfg)
    gathered = gather_statistics(SitesGrid(flat, 4), cfg, new_model(cfg), ConfigRecord(),
                                 feature_width=encoder_for(cfg).num_features)
    assert gathered.precision == {f"site {s}": FLOAT32_ROOT for s in range(4)}
    for site, stats in zip(sites, per_site, strict=True):
        float64_bytes = ArrayRecord(stats.to_arrays()).count_bytes()
        assert gathered.sent[f"site {site.site_id}"] < 0.51 * float64_bytes
    inputs = head_inputs(closed_form_head(new_model(cfg)), torch.cat([s.val_set.inputs for s in sites]))
    twin = predictions(pooled, cfg, inputs)
    deviation = float((predictions(gathered.stats, cfg, inputs) - twin).abs().max())
    assert deviation <= FLOAT32_TOLERANCE
    rounded = [HeadStatistics(s.num_samples, s.feature_sum, s.label_counts, s.label_sums, s.gram.float().double())
               for s in per_site]
    assert float((predictions(sum(rounded[1:], rounded[0]), cfg, inputs) - twin).abs().max()) > FLOAT32_TOLERANCE


def test_a_site_sends_float64_where_float32_would_move_its_own_solve(task_identity):
    """The float32 root only where the site's own solve from it stays within ``SITE_FLOAT32_CHECK``
    on its validation images: not for a nearly unpenalised ridge problem on more random features
    than the site has images, nor under DP (noised sums go out as accounted). The float64 triangle
    moves nothing."""
    flat = {**SMALL, "model.adapter": "mlp", "model.hidden-dim": 512, "model.ridge-lambda": 1e-9}
    cfg = load_config(flat)
    site = get_site(cfg, 0)
    stats, _ = site.head_statistics()
    inputs = head_inputs(closed_form_head(new_model(cfg)), site.val_set.inputs)

    def solve(received):
        return HEAD_INITS["ridge"].solve(received, cfg.model)

    assert solve_deviation(stats, stats.to_arrays(), solve, inputs) == 0.0
    assert solve_deviation(stats, stats.to_arrays(float32=True), solve, inputs) > SITE_FLOAT32_CHECK
    sent = wire_arrays(stats, cfg, site, Broadcast())
    assert set(sent) == {*FIRST_MOMENTS, GRAM_UPPER} and sent[GRAM_UPPER].dtype == torch.float64
    dp = load_config({**SMALL, "privacy.dp": True, "privacy.epsilon": 3.0})
    dp_site = get_site(dp, 0)
    assert GRAM_UPPER in wire_arrays(dp_site.head_statistics()[0], dp, dp_site, Broadcast())


def test_the_statistics_bytes_are_the_wire_arrays_and_auto_picks_random_features_within_the_budget():
    rng = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 24, generator=rng), torch.eye(3)[torch.randint(0, 3, (50,), generator=rng)]
    stats = HeadStatistics.of(x, y, with_gram=True)
    for float32 in (False, True):
        arrays = stats.to_arrays(float32=float32)
        assert arrays[ROOT_UPPER if float32 else GRAM_UPPER].shape == (packed_size(24),)
        assert statistics_bytes(24, 3, float32=float32) == sum(a.numel() * a.element_size() for a in arrays.values())
    # 2,048 random features, 4 classes: 8.08 MiB in float32 (the triangle alone is 4 KiB over 8 MiB), 16.1 in float64
    float32_bytes, float64_bytes = (statistics_bytes(2048, 4, float32=f) for f in (True, False))
    assert (float32_bytes, float64_bytes) == (8_474_664, 16_867_368)
    assert 4 * packed_size(2048) - 8 * 2**20 == 4096
    chosen = auto_head(2048, 4, float64_bytes)
    assert (chosen.adapter, chosen.hidden_dim, chosen.head_init) == ("mlp", 2048, "ridge")
    assert "random features" in chosen.reason and "16,867,368" in chosen.reason
    fallback = auto_head(2048, 4, float64_bytes - 1)
    assert (fallback.adapter, fallback.hidden_dim, fallback.head_init) == ("linear", None, "ridge")
    assert "over the budget of 16,867,367" in fallback.reason


def test_the_epsilon_of_private_statistics_reaches_the_run_summary(task_identity):
    """A closed-form-only run under DP has no training reply to report epsilon: the release's own does."""
    cfg = load_config({**SMALL, "privacy.dp": True, "privacy.epsilon": 3.0, "num-server-rounds": 0})
    answers = {}
    for site_id in range(4):
        stats, metrics = get_site(cfg, site_id).head_statistics()
        answers[100 + site_id] = RecordDict({ARRAYS: ArrayRecord(stats.to_arrays()), METRICS: MetricRecord(metrics)})
    model, width = new_model(cfg), encoder_for(cfg).num_features
    _, _, epsilons = pooled_statistics(QueryGrid("head_statistics", answers), cfg, model, ConfigRecord(),
                                       feature_width=width)
    assert set(epsilons) == {"0", "1", "2", "3"}
    assert all(eps == pytest.approx(3.0, rel=0.02) for eps in epsilons.values())


def test_a_sites_statistics_reply_carries_only_the_named_sums(task_identity):
    cfg = load_config(SMALL)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 4}, state=RecordDict(),
                      run_config=SMALL)
    answer = client_app.app(instruction("query.head_statistics", RecordDict({"config": ConfigRecord()}), 7),
                                        context)
    assert set(answer.content) == {ARRAYS, METRICS}
    # the Gram matrix once, as the packed float32 root of the site's scatter (its own check passed)
    assert set(answer.content[ARRAYS]) == {*FIRST_MOMENTS, ROOT_UPPER}
    assert set(answer.content[METRICS]) == {NUM_EXAMPLES, SITE_ID}
    root = answer.content[ARRAYS][ROOT_UPPER].numpy()
    assert root.shape == (packed_size(encoder_for(cfg).num_features),) and root.dtype == np.float32


def test_private_statistics_are_noised_clipped_and_accounted_in_the_sites_ledger():
    cfg = load_config({**SMALL, "privacy.dp": True, "privacy.epsilon": 3.0, "num-server-rounds": 4})
    site = get_site(cfg, 0)
    ledger = PrivacyLedger()
    noisy, metrics = site.head_statistics(ledger=ledger)
    clean, _ = get_site(load_config(SMALL), 0).head_statistics()
    assert not torch.allclose(noisy.gram, clean.gram) and torch.equal(noisy.gram, noisy.gram.T)
    # the statistics spend privacy.statistics-share (half) of the budget; DP-SGD is planned for the rest
    assert metrics["epsilon"] == pytest.approx(1.5, rel=0.02) and ledger.history == [(statistics_noise(cfg), 1.0, 1)]
    plan = round_plan(cfg, len(site.train_set.labels))
    whole_run = PrivacyLedger([*ledger.history, *[(plan.noise_multiplier, plan.sample_rate, plan.steps)] * 4])
    assert 2.9 < whole_run.epsilon(cfg.privacy.delta) <= 3.0 + 1e-9
    alone = load_config({**SMALL, "privacy.dp": True, "privacy.epsilon": 3.0, "num-server-rounds": 0})
    assert statistics_noise(alone) < statistics_noise(cfg)  # no rounds follow: the whole budget


def test_closed_form_keys_are_checked_by_name():
    for flat, key in (({"model.head-init": "lsq"}, "model.head-init"),
                      ({"model.head-init": "ncm", "model.adapter": "linear"}, "model.adapter"),
                      ({"model.head-init": "ridge", "model.adapter": "linear", "strategy.name": "fedper"},
                       "personalization.mode"),
                      ({"model.ridge-lambda": -1.0}, "model.ridge-lambda"),
                      ({"num-server-rounds": 0, "model.head-init": "random"}, "num-server-rounds")):
        with pytest.raises(ConfigError, match=key):
            load_config(flat)
    assert load_config({"model.head-init": "ridge", "model.adapter": "linear", "num-server-rounds": 0})


@pytest.mark.parametrize(("flat", "resolved"), [
    ({}, "ridge"),  # the default linear head starts from the pooled closed form
    ({"model.adapter": "mlp"}, "random"),  # fine-tuning its hidden layer from the closed form lost the gain
    ({"model.adapter": "cosine"}, "random"),  # ncm is a choice, not a default: it is weak on some encoders
    ({"model.adapter": "lora"}, "random"),
    ({"privacy.dp": True}, "random"),  # the statistics would spend privacy budget nobody asked to spend
    ({"strategy.name": "fedper"}, "random"),
    ({"strategy.name": "spectral"}, "random"),
    ({"ssl.rounds": 1}, "random"),
    ({"model.standardise-features": True}, "random"),
    ({"model.head-init": "random"}, "random"),  # an explicit choice is kept
])
def test_auto_head_init_is_the_closed_form_only_where_it_needs_no_other_choice(flat, resolved):
    assert load_config({"model.head-init": "auto", **flat}).model.head_init == resolved


def test_by_default_no_rounds_means_the_closed_form_alone():
    assert load_config({"num-server-rounds": 0}).model.head_init == "ridge"


def test_the_logit_scale_is_the_one_with_the_lowest_pooled_validation_loss(task_identity):
    from omnirad.site import RoundInputs
    from omnirad_fl.server.closed_form import pooled_scale

    cfg = load_config(SMALL)
    sites, per_site, _ = sites_and_pool(cfg)
    summed = sum(per_site[1:], per_site[0])
    model = new_model(cfg)
    closed_form_head(model).set_closed_form(*(t.float() for t in ridge_solution(summed, cfg.model.ridge_lambda)), 1.0)
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = {100 + s.site_id: s.scale_losses(RoundInputs(state, 0), SCALES) for s in sites}
    answers = {node: RecordDict({ARRAYS: ArrayRecord({"losses": loss})}) for node, loss in losses.items()}
    scale, totals = pooled_scale(QueryGrid("logit_scale", answers), state, ConfigRecord())
    expected = torch.stack(list(losses.values())).sum(0)
    assert scale == SCALES[int(expected.argmin())] and totals == pytest.approx(expected.tolist())
    assert 1.0 < scale < SCALES[-1]  # an interior optimum: the grid spans it


class SitesGrid:
    """Sites answering the server's queries through the real ClientApp handlers, in this process:
    node 100 + i is site i. Keeps who was asked what, and for which task."""

    def __init__(self, run_config: dict, num_sites: int) -> None:
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config=run_config,
                                          node_config={"partition-id": i, "num-partitions": num_sites})
                         for i in range(num_sites)}
        self.asked: list[tuple[int, str, str]] = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            self.asked.append((node, kind, str(msg.content["config"].get("task", ""))))
            TaskIdentity.node_id = node  # a reply's sender is the process's node identity
            replies.append(client_app.app(instruction(kind, msg.content, node), self.contexts[node]))
        return replies


def test_each_task_of_a_multitask_run_gets_the_closed_form_of_its_own_sites(task_identity, tmp_path):
    flat = {**SMALL, "data.num-sites": 6, "data.partition": "iid", "run.output-dir": str(tmp_path),
            "multitask.site-tasks": "region,region,finding,finding,lesions,lesions"}
    cfg = load_config(flat)
    groups = group_sites({100 + s: (s, declaration(trained_task(cfg.multitask, s), site_view(cfg, s).data)) for s in range(6)}, None)
    record, _ = initial_record(cfg, groups)
    grid, folder = SitesGrid(flat, 6), RunFolder.create(cfg)
    solved, summary = closed_form_tasks(grid, cfg, groups, record, ConfigRecord(), folder, broadcast=Broadcast(),
                                        feature_width=encoder_for(cfg).num_features)
    # each classification group's head is the pooled closed form of its own sites' data and labels
    for task, members in (("region", (0, 1)), ("finding", (2, 3))):
        task_cfg = task_config(cfg, task)
        sites = [get_site(site_view(cfg, s), s) for s in members]
        head = closed_form_head(new_model(task_cfg))
        pooled = HeadStatistics.of(head_inputs(head, torch.cat([s.train_set.inputs for s in sites])),
                                   statistics_targets(sites[0].task, np.concatenate([s.train_set.labels for s in sites])),
                                   with_gram=True)
        weight, _ = HEAD_INITS["ridge"].solve(pooled, task_cfg.model)
        scale = summary["closed-form"][task]["logit-scale"]
        torch.testing.assert_close(solved[f"{task}/fc.weight"], (weight * scale).float(), atol=1e-4, rtol=1e-4)
        assert set(summary["closed-form"][task]["statistics-bytes-per-site"]) == {f"site {s}" for s in members}
    assert not torch.equal(solved["region/fc.weight"], solved["finding/fc.weight"])
    # a segmentation group has no closed form: its decoder is what it was
    assert "lesions" not in summary["closed-form"]
    assert all(torch.equal(solved[k], v) for k, v in record.items() if k.startswith("lesions/"))
    # only a group's own sites are asked, with the group's task named (a site refuses another task's)
    asked = {(node, task) for node, _, task in grid.asked}
    assert asked == {(100, "region"), (101, "region"), (102, "finding"), (103, "finding")}
    assert set(json.loads((folder.path / "closed-form.json").read_text())) == {"region", "finding"}


def test_a_closed_form_head_alone_ships_the_solved_head_and_reports_it(tmp_path, task_identity):
    """The recommended skewed-federation recipe (random-features ridge, no rounds): the final adapter
    is the solved head, not an empty file, the run ships round 0, and its report is written."""
    flat = {**SMALL, "data.num-sites": 2, "model.adapter": "mlp", "model.hidden-dim": 64, "model.head-init": "ridge",
            "num-server-rounds": 0, "run.output-dir": str(tmp_path)}
    run = run_phases(ServerRun(InProcessGrid(flat, num_sites=2), load_run_config(flat)))
    folder = run.need_folder().path
    final, best = load_file(folder / "final_adapter.safetensors"), load_file(folder / "best_adapter.safetensors")
    assert final and final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in final)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 0
    assert summary["shipped"]["round"] == 0 and summary["shipped"]["adapter"] == "best_adapter.safetensors"
    assert summary["shipped"]["global"] == summary["final"]
    report = json.loads((folder / "closed-form.json").read_text())
    assert (report["adapter"], report["head-inputs"]) == ("mlp", 64)
    assert report["statistics-precision-per-site"] == {"site 0": FLOAT32_ROOT, "site 1": FLOAT32_ROOT}
    assert "| shipped model (round 0, federated-val macro-f1), server test |" in write_run_report(folder).read_text()


def test_on_a_split_the_closed_form_separates_the_scale_is_chosen_on_validation_and_fine_tuning_moves(
        tmp_path, task_identity):
    """200 training images, 4 classes, 192 features: the ridge solution separates the training
    images, where the largest scale (316) would win and saturate the softmax (test cross-entropy 54,
    FedAvg changing nothing, measured before). On the validation splits the scale stays inside the
    grid, the probabilities are calibrated and the rounds move the model."""
    flat = {"data.num-train": 200, "data.num-test": 200, "data.size": 32, "data.num-sites": 4, "data.partition": "iid",
            "model.head-init": "ridge", "num-server-rounds": 2, "run.output-dir": str(tmp_path)}
    run = run_phases(ServerRun(InProcessGrid(flat, num_sites=4), load_run_config(flat)))
    assert encoder_for(run.cfg).num_features > 200 / 4  # more features than training images per class
    folder = run.need_folder().path
    scale = json.loads((folder / "closed-form.json").read_text())["logit-scale"]
    assert SCALES[0] < scale < SCALES[-1]
    rounds = [json.loads(line)["global"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["loss"] < 2.0 and rounds[0]["ece"] < 0.2
    assert abs(rounds[2]["loss"] - rounds[0]["loss"]) > 1e-3 and rounds[2]["auc"] != rounds[0]["auc"]
