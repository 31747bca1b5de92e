"""The server side of federated SSL pretraining without a network: message type and content."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.protocol import TEACHER
from omnirad_fl.server.pretraining import SslFedAvg, pretrain_encoder, pretrained_instructions


class FakeGrid:
    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def test_ssl_messages_are_train_ssl_and_carry_student_teacher_and_round(task_identity):
    teacher = ArrayRecord({"vit.w": torch.ones(2)})
    strategy = SslFedAvg(teacher, min_train_nodes=3, min_available_nodes=3)
    messages = list(strategy.configure_train(2, ArrayRecord({"vit.w": torch.zeros(2)}), ConfigRecord({"ssl-rounds": 5}),
                                             FakeGrid()))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13]
    for message in messages:
        assert message.metadata.message_type == "train.ssl"
        assert torch.equal(message.content[TEACHER].to_torch_state_dict()["vit.w"], torch.ones(2))
        assert torch.equal(message.content["arrays"].to_torch_state_dict()["vit.w"], torch.zeros(2))
        assert message.content["config"]["server-round"] == 2 and message.content["config"]["ssl-rounds"] == 5


def test_no_pretraining_leaves_the_configuration_alone_and_resume_is_refused():
    cfg = load_config({})
    assert pretrain_encoder(FakeGrid(), cfg) is None and pretrained_instructions(cfg) == {}
    with pytest.raises(ConfigError, match="run.resume-from"):
        pretrain_encoder(FakeGrid(), load_config({"ssl.rounds": 1, "run.resume-from": "runs/x"}))
