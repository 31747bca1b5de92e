"""The run folder and the observed strategy, driven with mock replies and no network."""

import json
import os
import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from omnirad.configure import load_config
from omnirad_fl.server.run_folder import RunFolder, newest_summary
from omnirad_fl.strategies import build_strategy
from tests.conftest import answering

pytestmark = pytest.mark.usefixtures("task_identity", "mock_round_token")


def reply(site: int, weight: float, n: int, accuracy: float | None = None) -> Message:
    state = {"fc.weight": torch.full((4, 8), weight), "fc.bias": torch.zeros(4)}
    metrics = {"num-examples": n, "site-id": site, "train-loss": 1.0 / (site + 1), "peak-rss-mb": 100.0 + site}
    if accuracy is not None:
        metrics.update({"accuracy": accuracy, "macro-f1": accuracy})
        content = RecordDict({"metrics": MetricRecord(metrics)})
        return Message(content=content, dst_node_id=0, message_type=MessageType.EVALUATE)
    content = answering(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}))
    return Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)


GLOBAL = {"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}


def test_round_is_aggregated_by_fedavg_and_recorded_per_site(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2})
    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, folder)
    start_round(strategy, 1, GLOBAL, 2)
    arrays, metrics = strategy.aggregate_train(1, [reply(0, 1.0, 100), reply(1, 4.0, 300)])
    # FedAvg weights by num-examples: (1*100 + 4*300) / 400 = 3.25
    np.testing.assert_allclose(arrays["fc.weight"].numpy(), 3.25)
    strategy.aggregate_evaluate(1, [reply(0, 0, 10, accuracy=0.5), reply(1, 0, 30, accuracy=0.9)])
    line = folder.end_round(1, {"accuracy": 0.8, "macro-f1": 0.7, "auc": 0.9})

    assert set(line["sites"]) == {"0", "1"}
    assert line["sites"]["1"]["evaluate"]["accuracy"] == 0.9
    assert line["federated-val"]["accuracy"] == (0.5 * 10 + 0.9 * 30) / 40
    assert "site-id" not in line["federated-val"] and "site-id" not in metrics
    one_site_bytes = ArrayRecord({"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}).count_bytes()
    assert line["bytes-up"] == 2 * one_site_bytes
    assert one_site_bytes < 2 * (4 * 8 + 4) * 4 + 512  # parameter bytes plus array framing

    summary = folder.finish(arrays.to_torch_state_dict(), {"adapter": "linear"})
    on_disk = json.loads((folder.path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["best"]["round"] == 1 and on_disk["sites-per-round"] == {"1": ["0", "1"]}
    assert on_disk["peak-rss-mb"]["clients"] == 101.0
    assert (folder.path / "final_adapter.safetensors").stat().st_size > 0
    assert (folder.path / "curves.png").stat().st_size > 0
    lines = (folder.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1]


def test_failed_replies_are_recorded_and_left_out(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2})
    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, folder)
    start_round(strategy, 1, GLOBAL, 2)
    failed = Message(Error(code=1, reason="site crashed"), reply_to=reply(1, 0, 1))
    arrays, _ = strategy.aggregate_train(1, [reply(0, 2.0, 50), failed])
    np.testing.assert_allclose(arrays["fc.weight"].numpy(), 2.0)
    line = folder.end_round(1, {})
    assert list(line["sites"]) == ["0"] and "site crashed" in line["failures"][0]


def test_a_lost_site_is_named_in_the_failures_though_the_superlink_answers_for_it(tmp_path):
    """Flower's SuperLink replies for a node it stopped hearing from, as sender 1 (itself): the
    failure is traced back through the instruction it answers to the site that held that node."""
    folder = RunFolder.create(load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2}))
    for server_round in (1, 2):
        sent = [Message(RecordDict({"arrays": ArrayRecord(GLOBAL)}), dst_node_id=node, message_type=MessageType.TRAIN)
                for node in (11, 12)]
        folder.on_sent(server_round, "train", sent)
        replies = [reply(0, 1.0, 10), reply(1, 1.0, 10)]
        if server_round == 2:
            replies[1] = Message(Error(code=0, reason="Node Unavailable"), reply_to=sent[1])
        for answer, instruction in zip(replies, sent, strict=True):  # as delivered: ids set by Flower on push
            answer.metadata.__dict__["_reply_to_message_id"] = instruction.object_id
            answer.metadata.__dict__["_src_node_id"] = 1 if answer.has_error() else instruction.metadata.dst_node_id
        folder.on_replies(server_round, "train", replies)
    assert folder.current.failures == ["train: site 1 (node 12): Node Unavailable"]


def test_two_nodes_claiming_one_site_number_are_reported(tmp_path):
    folder = RunFolder.create(load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2}))
    sent = [Message(RecordDict({"arrays": ArrayRecord(GLOBAL)}), dst_node_id=node, message_type=MessageType.TRAIN)
            for node in (11, 12)]
    folder.on_sent(1, "train", sent)
    replies = [reply(0, 1.0, 10), reply(0, 1.0, 10)]  # both sites were configured with site.id 0
    for answer, instruction in zip(replies, sent, strict=True):
        answer.metadata.__dict__["_reply_to_message_id"] = instruction.object_id
        answer.metadata.__dict__["_src_node_id"] = instruction.metadata.dst_node_id
    folder.on_replies(1, "train", replies)
    assert folder.current.failures == ["train: nodes 11 and 12 both say they are site 0: give each site its own site.id"]


def test_the_summary_of_a_run_is_never_taken_from_another_run_sharing_its_output_dir(tmp_path):
    """Two sweeps writing to one output folder once handed one sweep the other's result."""
    old = tmp_path / "old-run" / "summary.json"
    old.parent.mkdir()
    old.write_text("{}")
    os.utime(old, (1.0, 1.0))
    since = time.time() - 1
    assert newest_summary(tmp_path, since) is None
    mine = tmp_path / "mine" / "summary.json"
    mine.parent.mkdir()
    mine.write_text("{}")
    assert newest_summary(tmp_path, since) == mine
    other = tmp_path / "other" / "summary.json"
    other.parent.mkdir()
    other.write_text("{}")
    with pytest.raises(RuntimeError, match="2 runs finished in .*mine, other.*run.output-dir"):
        newest_summary(tmp_path, since)


def test_a_resumed_fedadam_run_takes_its_optimiser_state_from_the_checkpoint_and_ends_as_the_uninterrupted_run(
        tmp_path, run_in_process):
    """A 2-round FedAdam run extended to 4 rounds by run.resume-from ends where the 4-round run
    ends: the server optimiser's moments come back from the checkpoint (with them reset, round 3's
    step would differ). Both runs are the app's phases and ClientApp in this process."""
    config = ("data.num-train=240 data.num-test=80 data.size=32 train.local-epochs=1 strategy.name='fedadam' "
              "model.adapter='linear' model.head-init='random'")
    expected = json.loads((run_in_process(2, f"num-server-rounds=4 {config}", tmp_path / "whole") / "summary.json")
                          .read_text())
    first = run_in_process(2, f"num-server-rounds=2 {config}", tmp_path / "parts")
    resumed = run_in_process(2, f"num-server-rounds=4 {config} run.resume-from='{first}'", tmp_path / "parts")
    assert resumed == first
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed-after-round"] == 2 and summary["rounds"] == 4
    for key in ("accuracy", "macro-f1", "loss"):
        assert summary["final"][key] == pytest.approx(expected["final"][key], abs=1e-6), key
