"""Nothing but the declared adapter tensors and scalar metrics leaves a site, whatever it runs.

Every reply the ClientApp builds is inspected: its records, the names and shapes of its arrays
(exactly the federated tensors of the model, so no array can carry a per-sample dimension, images
or features) and its metrics (scalars only).
"""

import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from omnirad.adapters import trainable_state
from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad.protocol import SIMULATION_STATE_DIR
from omnirad.site_cache import get_site
from omnirad.spectral import bank_to_config
from omnirad.standardise import FeatureMoments, Standardisation
from omnirad_fl.client import app as client_app

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "data.num-sites": 2,
         "train.local-epochs": 1, "num-server-rounds": 1}
SETUPS = {
    "mlp head": {},
    "linear head, fedprox": {"model.adapter": "linear", "strategy.name": "fedprox"},
    "decoder": {"data.task": "segmentation", "model.adapter": "decoder"},
    "caption decoder": {"data.task": "captioning", "model.adapter": "caption-decoder", "model.caption-width": 32},
    "lora": {"model.adapter": "lora", "model.lora-rank": 2},
    "fedbn": {"strategy.name": "fedbn", "model.adapter": "mlp"},
    "fedper, fine-tuning": {"strategy.name": "fedper", "model.adapter": "mlp", "personalization.finetune-epochs": 1},
    "spectral": {"strategy.name": "spectral", "data.partition": "modality"},
    "standardised linear head": {"model.adapter": "linear", "model.standardise-features": True},
}


def instruction(message_type: str, content: RecordDict) -> Message:
    metadata = Metadata(run_id=1, message_id=message_type, src_node_id=0, dst_node_id=9, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(metadata=metadata, content=content)


def assert_only_scalars(record) -> None:
    assert all(isinstance(v, int | float) for v in record.values()), dict(record)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_replies_carry_only_the_federated_tensors_and_scalar_metrics(setup, tmp_path):
    flat = {**SMALL, **SETUPS[setup]}
    cfg = load_config(flat)
    site = get_site(cfg, 0)
    model = new_model(cfg)
    shared = {k: v for k, v in trainable_state(model).items() if k not in site.local_keys}
    context = Context(run_id=1, node_id=9, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=flat)
    config = ConfigRecord({"server-round": 1, "proximal-mu": 0.01, "round-token": "ab12",
                           SIMULATION_STATE_DIR: str(tmp_path)})
    if cfg.strategy.name == "spectral":
        query = client_app.app(instruction("query.spectral", RecordDict()), context)
        assert set(query.content) == {"arrays"}
        (prototypes,) = query.content["arrays"].values()
        assert prototypes.shape[1] == cfg.spectral.frequency_size ** 2 and prototypes.shape[0] <= cfg.spectral.prototypes
        bank = torch.from_numpy(prototypes.numpy())
        config = ConfigRecord({**config, **bank_to_config(torch.cat([bank, bank]))})
    if cfg.model.standardise_features:  # moments, not features: a count and two vectors of the feature width
        query = client_app.app(instruction("query.feature_moments", RecordDict()), context)
        assert set(query.content) == {"arrays"}
        arrays = {k: torch.from_numpy(v.numpy()) for k, v in query.content["arrays"].items()}
        width = site.train_set.inputs.shape[1]
        assert {k: tuple(v.shape) for k, v in arrays.items()} == {"count": (1,), "total": (width,), "squares": (width,)}
        standardisation = Standardisation.from_moments(FeatureMoments.from_arrays(arrays, "site 0"))
        config = ConfigRecord({**config, **standardisation.to_config()})

    reply = client_app.app(instruction("train", RecordDict({"arrays": ArrayRecord(shared), "config": config})), context)
    assert set(reply.content) == {"arrays", "metrics", "site-info"}
    # where it computed and the round's token it was sent, no more
    assert dict(reply.content["site-info"]) == {"device": "cpu", "precision": "fp32", "round-token": "ab12"}
    sent = reply.content["arrays"]
    assert {k: tuple(v.shape) for k, v in sent.items()} == {k: tuple(v.shape) for k, v in shared.items()}
    assert_only_scalars(reply.content["metrics"])

    evaluated = client_app.app(instruction("evaluate", RecordDict({"arrays": sent, "config": config})), context)
    assert set(evaluated.content) == {"metrics"}
    assert_only_scalars(evaluated.content["metrics"])
