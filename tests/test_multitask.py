"""Multi-task federation: task declarations and groups, their checks, and grouped aggregation driven
with mock replies and no network."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.sites import load_site, task_info
from omnirad.models import new_model
from omnirad.multitask import (
    TaskDeclaration,
    TaskMismatch,
    declaration,
    global_record,
    group_sites,
    group_view,
    shared_names,
    site_view,
    task_config,
    trained_task,
)
from omnirad.protocol import TASK
from omnirad.tasks import MULTI_CLASS, SEGMENTATION, TaskSpec
from omnirad_fl.client.deployment import check_task
from omnirad_fl.server.multitask import MultiTaskEvaluator, expected_tasks, initial_record, multitask_strategy
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies.multitask import SCORE, add_score
from tests.conftest import FakeGrid, answering

pytestmark = pytest.mark.usefixtures("task_identity", "mock_round_token")
SIX = {"data.num-sites": 6, "data.num-train": 240, "data.num-test": 40, "data.size": 32, "data.partition": "iid",
       "multitask.site-tasks": "region,region,region,lesions,lesions,lesions", "model.adapter": "linear"}
REGION = TaskSpec(MULTI_CLASS, ("head", "chest", "abdomen", "pelvis"))
LESIONS = TaskSpec(SEGMENTATION, ("background", "organ", "lesion"))


def six_groups(cfg):
    """Sites 0-2 declare region, 3-5 lesions (nodes 100-105)."""
    return group_sites({100 + s: (s, TaskDeclaration("region" if s < 3 else "lesions", REGION if s < 3 else LESIONS))
                        for s in range(6)}, expected_tasks(cfg))


def test_each_site_trains_its_own_task_on_the_same_images():
    cfg = load_config(SIX)
    region, lesions = site_view(cfg, 0), site_view(cfg, 4)
    assert task_info(region.data) == REGION and region.model.adapter == "linear"
    assert task_info(lesions.data) == LESIONS and lesions.model.adapter == "decoder"
    assert declaration(trained_task(cfg.multitask, 4), lesions.data) == TaskDeclaration("lesions", LESIONS)
    # a site holds the same images whatever it labels: the split does not depend on the task
    as_region, as_lesions = load_site(task_config(cfg, "region").data, 4, seed=cfg.run.seed), load_site(lesions.data, 4, seed=lesions.run.seed)
    assert np.array_equal(as_region.train.images, as_lesions.train.images)
    assert as_lesions.train.labels.ndim == 3 and as_region.train.labels.ndim == 1
    finding = task_config(cfg, "finding")
    assert task_info(finding.data).label_names == ("normal", "mass", "nodules", "diffuse")


def test_an_embedded_captioning_site_declares_the_words_the_server_expects():
    # Only caption site files wait for a federated word count; the embedded captions' vocabulary
    # is known to every participant, so its sites declare it and the server's check passes.
    cfg = load_config({**SIX, "multitask.site-tasks": "region,region,region,captions,captions,captions",
                       "model.caption-width": 32})
    declared = declaration(trained_task(cfg.multitask, 4), site_view(cfg, 4).data)
    assert declared is not None and declared.spec.label_names
    groups = group_sites({100 + s: (s, declaration(trained_task(cfg.multitask, s), site_view(cfg, s).data)) for s in range(6)}, expected_tasks(cfg))
    assert groups["captions"].sites == (3, 4, 5) and groups["captions"].spec == declared.spec


@pytest.mark.parametrize(("overrides", "key"), [
    ({"multitask.site-tasks": "region,lesions"}, "multitask.site-tasks"),  # 2 names for 6 sites
    ({"multitask.site-tasks": "region,region,region,lesions,lesions,tumours"}, "multitask.site-tasks"),
    ({"multitask.site-tasks": "-,-,-,-,-,-"}, "multitask.site-tasks"),
    ({"model.adapter": "full"}, "model.adapter"),
    ({"privacy.dp": True}, "privacy.dp"),
    ({"personalization.mode": "fedper"}, "personalization.mode"),
    ({"ssl.rounds": 2}, "ssl.rounds"),
    ({"data.dataset": "files", "data.site-files": "a,b,c,d,e,f", "data.num-classes": 2}, "data.dataset"),
    ({"data.dataset": "deployment"}, "declared"),  # deployed sites name their own tasks
])
def test_a_multitask_configuration_that_cannot_run_is_refused_by_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config({**SIX, **overrides})


def test_deployed_tasks_are_what_their_sites_declare():
    cfg = load_config({"data.dataset": "deployment", "multitask.site-tasks": "declared", "data.num-sites": 3})
    declared = {100: (0, TaskDeclaration("chest", TaskSpec(MULTI_CLASS, ("0", "1")))),
                101: (1, TaskDeclaration("organs", TaskSpec(SEGMENTATION, ("background", "class 1", "class 2")))),
                102: (2, TaskDeclaration("chest", TaskSpec(MULTI_CLASS, ("0", "1"))))}
    groups = group_sites(declared, expected_tasks(cfg))
    assert {n: g.sites for n, g in groups.items()} == {"chest": (0, 2), "organs": (1,)}
    organs = task_config(cfg, "organs", groups["organs"].spec)
    assert organs.model.adapter == "decoder" and organs.data.num_classes == 3
    with pytest.raises(TaskMismatch, match="site 0 declares .* but site 2 declares"):
        group_sites({**declared, 102: (2, TaskDeclaration("chest", TaskSpec(MULTI_CLASS, ("0", "1", "2"))))}, None)


def test_groups_come_from_the_declarations_and_must_agree():
    expected = {"region": REGION, "lesions": LESIONS}
    declared = {100 + s: (s, TaskDeclaration("region" if s < 3 else "lesions", REGION if s < 3 else LESIONS)) for s in range(6)}
    declared[106] = (6, None)  # a site that sits the run out
    groups = group_sites(declared, expected)
    assert list(groups) == ["lesions", "region"]
    assert groups["region"].nodes == (100, 101, 102) and groups["lesions"].sites == (3, 4, 5)
    other_labels = TaskSpec(MULTI_CLASS, ("head", "chest", "abdomen", "pelvis", "limbs"))
    with pytest.raises(TaskMismatch, match="site 0 declares .* but site 2 declares .*limbs"):
        group_sites({**declared, 102: (2, TaskDeclaration("region", other_labels))}, expected)
    with pytest.raises(TaskMismatch, match="site 5 declares task 'spine'"):
        group_sites({**declared, 105: (5, TaskDeclaration("spine", REGION))}, expected)
    with pytest.raises(TaskMismatch, match="the server expects"):
        group_sites({n: (s, TaskDeclaration("region", other_labels)) for n, (s, _) in declared.items()}, expected)


def test_lora_on_the_encoder_is_what_classification_and_segmentation_share():
    cfg = load_config({**SIX, "model.adapter": "lora", "model.lora-rank": 2})
    record, shared = initial_record(cfg, six_groups(cfg))
    assert shared and all(".lora_" in key for key in shared)
    assert {k for k in record if k.startswith("shared/")} == {f"shared/{k}" for k in shared}
    region = trainable_state(new_model(task_config(cfg, "region")))
    assert set(group_view(record, "region")) == set(region)  # a site gets exactly its model's tensors
    assert not any(k.startswith("region/") and ".lora_" in k for k in record)
    cfg = load_config({**SIX, "model.adapter": "lora", "model.lora-rank": 2, "multitask.shared": False})
    unshared, none = initial_record(cfg, six_groups(cfg))
    assert not none and any(k.startswith("region/") and ".lora_" in k for k in unshared)
    # frozen encoder, separate heads: nothing in common
    assert not shared_names({n: trainable_state(new_model(task_config(load_config(SIX), n))) for n in ("lesions", "region")})


def test_two_classification_tasks_never_share_a_head_even_of_one_shape():
    cfg = load_config({**SIX, "model.adapter": "lora", "model.lora-rank": 2,
                       "multitask.site-tasks": "region,region,region,finding,finding,finding"})
    states = {n: trainable_state(new_model(task_config(cfg, n))) for n in ("finding", "region")}
    assert states["finding"]["head.fc.weight"].shape == states["region"]["head.fc.weight"].shape  # 4 labels each
    shared = shared_names(states)
    assert shared and all(k.startswith("backbone.") and ".lora_" in k for k in shared)
    heads = {n: trainable_state(new_model(task_config(load_config({**SIX, "model.adapter": "linear"}), n)))
             for n in ("finding", "region")}
    assert not shared_names(heads)


def states(head: float, shared: float) -> dict[str, dict[str, torch.Tensor]]:
    return {"region": {"fc.weight": torch.full((4, 3), head), "lora.A": torch.full((2,), shared)},
            "lesions": {"classify.weight": torch.full((3, 2), head), "lora.A": torch.full((2,), shared)}}


def reply(node: int, site: int, state: dict[str, torch.Tensor], n: int) -> Message:
    TaskIdentity.node_id = node  # a reply's sender is the process's node identity
    metrics = MetricRecord({"num-examples": n, "site-id": site, "train-loss": 0.1})
    return Message(content=answering(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})), dst_node_id=0,
                   message_type="train")


def grouped_strategy(tmp_path, **overrides):
    cfg = load_config({**SIX, "run.output-dir": str(tmp_path), **overrides})
    folder = RunFolder.create(cfg)
    return multitask_strategy(cfg, folder, six_groups(cfg)), folder


def test_each_group_is_averaged_among_its_members_and_the_shared_part_among_all(tmp_path):
    strategy, folder = grouped_strategy(tmp_path)
    record = global_record(states(0.0, 0.0), frozenset({"lora.A"}))
    messages = list(strategy.configure_train(1, ArrayRecord(record), ConfigRecord(), FakeGrid(6)))
    assert sorted(m.metadata.dst_node_id for m in messages) == list(range(100, 106))
    for message in messages:
        task = "region" if message.metadata.dst_node_id < 103 else "lesions"
        assert message.content["config"][TASK] == task
        assert set(message.content["arrays"]) == set(states(0, 0)[task])  # its own model's names only
    # region sites move their head to 1, 2, 3 and the shared tensor to 10; lesion sites to 30 and 50
    replies = [reply(100 + s, s, {"fc.weight": torch.full((4, 3), s + 1.0), "lora.A": torch.full((2,), 10.0)}, 100)
               for s in range(3)]
    replies += [reply(103, 3, {"classify.weight": torch.full((3, 2), 30.0), "lora.A": torch.full((2,), 50.0)}, 100),
                reply(104, 4, {"classify.weight": torch.full((3, 2), 50.0), "lora.A": torch.full((2,), 50.0)}, 300)]
    arrays, metrics = strategy.aggregate_train(1, replies)  # site 5 did not answer
    result = {k: v.numpy() for k, v in arrays.items()}
    assert np.allclose(result["region/fc.weight"], 2.0)  # (1 + 2 + 3) / 3: region sites only
    assert np.allclose(result["lesions/classify.weight"], 45.0)  # (30 * 100 + 50 * 300) / 400
    assert np.allclose(result["shared/lora.A"], (10 * 300 + 50 * 400) / 700)  # every site, by examples
    assert result["shared/lora.A"].dtype == np.float32
    assert metrics["region/valid-updates"] == 3 and metrics["lesions/valid-updates"] == 2


def test_a_rejected_update_counts_neither_in_its_group_nor_in_the_shared_part(tmp_path):
    strategy, folder = grouped_strategy(tmp_path)
    record = global_record(states(0.0, 0.0), frozenset({"lora.A"}))
    list(strategy.configure_train(1, ArrayRecord(record), ConfigRecord(), FakeGrid(6)))
    replies = [reply(100 + s, s, {"fc.weight": torch.full((4, 3), 1.0), "lora.A": torch.full((2,), 4.0)}, 100) for s in range(3)]
    replies += [reply(103 + s, 3 + s, {"classify.weight": torch.full((3, 2), 1.0), "lora.A": torch.full((2,), 1.0)}, 100)
                for s in range(2)]
    replies.append(reply(105, 5, {"classify.weight": torch.full((3, 2), 1.0), "lora.A": torch.full((2,), np.nan)}, 1000))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["lesions/classify.weight"].numpy(), 1.0)
    assert np.allclose(arrays["shared/lora.A"].numpy(), (4.0 * 300 + 1.0 * 200) / 500)  # not its 1,000 examples
    assert folder.current.rejected and "site 5" in folder.current.rejected[0]


def test_a_group_without_replies_keeps_its_adapter(tmp_path):
    strategy, _ = grouped_strategy(tmp_path)
    record = global_record(states(7.0, 0.0), frozenset({"lora.A"}))
    list(strategy.configure_train(1, ArrayRecord(record), ConfigRecord(), FakeGrid(6)))
    replies = [reply(100 + s, s, {"fc.weight": torch.full((4, 3), 1.0), "lora.A": torch.full((2,), 4.0)}, 100) for s in range(3)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["lesions/classify.weight"].numpy(), 7.0)
    assert np.allclose(arrays["shared/lora.A"].numpy(), 4.0) and np.allclose(arrays["region/fc.weight"].numpy(), 1.0)


def test_the_mean_score_puts_cider_on_the_0_to_1_scale_of_the_other_tasks():
    metrics = {"region/macro-f1": 0.5, "captions/cider": 3.0}
    add_score(metrics, {"region": "macro-f1", "captions": "cider"})
    assert metrics[SCORE] == pytest.approx((0.5 + 0.3) / 2)  # CIDEr-D runs 0 to 10
    partial = {"region/macro-f1": 0.5}
    add_score(partial, {"region": "macro-f1", "captions": "cider"})
    assert SCORE not in partial  # a task without its metric: no score rather than a lopsided one


def test_evaluation_is_per_task_with_a_mean_score(tmp_path):
    strategy, _ = grouped_strategy(tmp_path)
    replies = [reply_eval(100, {"num-examples": 10, "macro-f1": 0.4, "loss": 1.0}),
               reply_eval(101, {"num-examples": 30, "macro-f1": 0.6, "loss": 1.0}),
               reply_eval(103, {"num-examples": 10, "dice": 0.7, "loss": 1.0})]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["region/macro-f1"] == pytest.approx(0.55) and metrics["lesions/dice"] == pytest.approx(0.7)
    assert metrics[SCORE] == pytest.approx((0.55 + 0.7) / 2)
    cfg = load_config(SIX)
    record, _ = initial_record(cfg, six_groups(cfg))
    central = MultiTaskEvaluator(cfg, six_groups(cfg))(record)
    assert {"region/macro-f1", "region/accuracy", "lesions/dice", SCORE} <= set(central)


def reply_eval(node: int, values: dict[str, float]) -> Message:
    TaskIdentity.node_id = node
    return Message(content=RecordDict({"metrics": MetricRecord(values)}), dst_node_id=0, message_type="evaluate")


def test_a_site_refuses_another_tasks_adapter():
    trained = trained_task(load_config(SIX).multitask, 0)
    check_task(trained, ConfigRecord({TASK: "region"}))
    with pytest.raises(TaskMismatch, match="'lesions'.*'region'"):
        check_task(trained, ConfigRecord({TASK: "lesions"}))
    with pytest.raises(TaskMismatch):
        check_task(trained_task(load_config().multitask, 0), ConfigRecord({TASK: "region"}))  # a single-task site


class PartlyConnected(FakeGrid):
    """Nodes 100-102 (region) are connected; of lesions only node 103."""

    def get_node_ids(self):
        return [100, 101, 102, 103]


def test_a_task_without_enough_sites_sits_the_round_out_instead_of_holding_up_the_others(tmp_path):
    strategy, _ = grouped_strategy(tmp_path)
    record = global_record(states(0.0, 0.0), frozenset({"lora.A"}))
    messages = list(strategy.configure_train(1, ArrayRecord(record), ConfigRecord(), PartlyConnected(6)))
    assert sorted(m.metadata.dst_node_id for m in messages) == [100, 101, 102]
    replies = [reply(100 + s, s, {"fc.weight": torch.full((4, 3), 1.0), "lora.A": torch.full((2,), 4.0)}, 100) for s in range(3)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["lesions/sat-out"] == 1.0 and np.allclose(arrays["region/fc.weight"].numpy(), 1.0)
