"""Spectral alignment (OmniFM-style reconstruction): embeddings, the bank, prompts, and its exchange."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

from omnirad.adapters import trainable_state
from omnirad.broadcast import Broadcast
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.sites import pooled_train
from omnirad.images import images_to_tensor
from omnirad.models import new_model
from omnirad.personalization import local_keys
from omnirad.site import RoundInputs
from omnirad.site_cache import get_site
from omnirad.spectral import (
    MIN_IMAGES_PER_PROTOTYPE,
    alignment_weight,
    bank_from_config,
    bank_to_config,
    site_prototypes,
    spectral_embeddings,
)
from omnirad_fl.strategies.spectral_bank import collect_spectral_bank
from tests.conftest import QueryGrid

SPECTRAL = {"strategy.name": "spectral", "data.size": 32, "data.num-train": 240, "data.num-test": 60,
            "data.num-sites": 2, "data.partition": "modality", "train.local-epochs": 1}


def test_embeddings_are_unit_vectors_and_ignore_the_pixel_encoding():
    images = pooled_train(load_config({"data.size": 32, "data.num-train": 40}).data).images
    as_uint8 = spectral_embeddings(torch.from_numpy(images).unsqueeze(1), 8)
    as_float = spectral_embeddings(images_to_tensor(images), 8)
    assert as_uint8.shape == (40, 64)
    assert torch.allclose(as_uint8.norm(dim=1), torch.ones(40))
    assert torch.allclose(as_uint8, as_float, atol=1e-5)


def test_embeddings_tell_imaging_styles_apart():
    """Nearest style centroid beats chance clearly (0.53 measured with 4 styles): retrieval has signal.
    OmniFM's premise is that low frequencies are similar across modalities, so not near 1 either."""
    pool = pooled_train(load_config({"data.size": 32, "data.num-train": 400}).data)
    emb = spectral_embeddings(images_to_tensor(pool.images), 8)
    styles = np.unique(pool.groups)
    centroids = torch.stack([emb[torch.from_numpy(pool.groups == s)].mean(0) for s in styles])
    nearest = (emb @ centroids.T).argmax(dim=1).numpy()
    assert (styles[nearest] == pool.groups).mean() > 1.5 / len(styles)


def test_prototypes_never_summarise_fewer_than_the_minimum_images():
    images = pooled_train(load_config({"data.size": 32, "data.num-train": 25}).data).images
    centroids = site_prototypes(images, 8, count=4, seed=0)
    assert 1 <= len(centroids) <= 25 // MIN_IMAGES_PER_PROTOTYPE
    assert torch.allclose(centroids.norm(dim=1), torch.ones(len(centroids)), atol=1e-5)


def test_the_bank_survives_a_flower_config_record():
    bank = torch.randn(5, 16)
    assert torch.equal(bank_from_config(bank_to_config(bank)), bank)
    assert bank_from_config({}) is None


def test_prompted_model_trains_prompts_and_head_only_and_keeps_the_suffix_local():
    cfg = load_config(SPECTRAL)
    site = get_site(cfg, 0)
    bank = site.spectral_prototypes()
    bank = torch.cat([bank, get_site(cfg, 1).spectral_prototypes()])
    model = new_model(cfg, Broadcast(bank))
    state = trainable_state(model)
    assert {k.split(".")[0] for k in state} == {"prior_to_tokens", "suffix", "head"}  # the encoder stays frozen
    assert local_keys(model, "none", "mlp") == {"suffix"}
    images = site.train_set.inputs[:6]
    logits = model(images)
    assert logits.shape == (6, 4)
    logits.sum().backward()
    assert model.prior_to_tokens.weight.grad.abs().sum() > 0 and model.suffix.grad.abs().sum() > 0

    shared = {k: v for k, v in state.items() if k not in site.local_keys}
    new_state, metrics = site.fit(RoundInputs(shared, server_round=1, proximal_mu=0.1, broadcast=Broadcast(bank)))
    assert metrics["alignment-weight"] == pytest.approx(alignment_weight(site.train_set.data.images, bank, 8))
    assert 1.0 <= metrics["alignment-weight"] <= 2.0
    assert not torch.equal(new_state["prior_to_tokens.weight"], state["prior_to_tokens.weight"])
    assert "accuracy" in site.evaluate(RoundInputs(shared, 0, personal={"suffix": new_state["suffix"]}, broadcast=Broadcast(bank)))


def test_retrieval_finds_an_images_own_spectrum_first():
    cfg = load_config(SPECTRAL)
    images = get_site(cfg, 0).train_set.inputs[:8]
    bank = spectral_embeddings(images, 8)
    model = new_model(cfg, Broadcast(torch.cat([bank, -bank])))
    prefix = model.prefix_tokens(images)
    assert torch.allclose(prefix[:, 0], model.prior_to_tokens(bank), atol=1e-5)


def test_spectral_needs_a_head_adapter_and_a_feasible_top_k():
    with pytest.raises(ConfigError, match="model.adapter"):
        load_config({**SPECTRAL, "model.adapter": "lora"})
    with pytest.raises(ConfigError, match="spectral.top-k"):
        load_config({**SPECTRAL, "spectral.top-k": 3})
    with pytest.raises(ConfigError, match="spectral.frequency-size"):
        load_config({**SPECTRAL, "spectral.frequency-size": 64})
    assert load_config({"data.num-sites": 1}).spectral.top_k == 2  # unused without strategy.name=spectral


def bank_grid(answers: dict[int, torch.Tensor | None]) -> QueryGrid:
    """Sites that answer the bank query with these centroids (None: an error)."""
    return QueryGrid("spectral", {node: None if t is None else RecordDict({"arrays": ArrayRecord({"prototypes": t})})
                                  for node, t in answers.items()})


@pytest.mark.usefixtures("task_identity")
def test_the_server_stacks_every_sites_centroids_and_refuses_a_bad_one():
    good = {1: torch.ones(2, 4), 2: torch.zeros(3, 4)}
    assert collect_spectral_bank(bank_grid(good), 4).shape == (5, 4)
    with pytest.raises(RuntimeError, match="node 2 sent centroids of shape"):
        collect_spectral_bank(bank_grid({1: torch.ones(2, 4), 2: torch.ones(2, 5)}), 4)
    with pytest.raises(RuntimeError, match="node 2 .*site crashed"):
        collect_spectral_bank(bank_grid({1: torch.ones(2, 4), 2: None}), 4)
    with pytest.raises(RuntimeError, match="node 1"):
        collect_spectral_bank(bank_grid({1: torch.full((2, 4), float("nan"))}), 4)
