"""LoRA (peft) and full fine-tuning: what a site sends, that the head trains, and the merged export."""

import re

import pytest
import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.encoders import create_encoder
from omnirad.models import encoder_for, new_model
from omnirad.site import LocalSite, RoundInputs

BASE = {"data.num-train": 120, "data.num-test": 40, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
        "data.min-site-samples": 10, "train.local-epochs": 1}
LORA_KEY = re.compile(r"backbone\.base_model\.model\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.lora_[AB]\.default\.weight")


def test_lora_state_is_exactly_the_low_rank_factors_and_the_head():
    state = trainable_state(new_model(load_config({**BASE, "model.adapter": "lora"})))
    lora = [k for k in state if k.startswith("backbone.")]
    head = [k for k in state if not k.startswith("backbone.")]
    assert all(LORA_KEY.fullmatch(k) for k in lora), lora[:3]
    assert len(lora) == 12 * 4 * 2  # 12 blocks x (qkv, proj, fc1, fc2) x (A, B)
    assert head == ["head.fc.weight", "head.fc.bias"]  # the head trains (the reference leaves it frozen)
    qkv_a = state["backbone.base_model.model.blocks.0.attn.qkv.lora_A.default.weight"]
    assert qkv_a.shape == (16, 192)  # default rank 16 on vit-tiny's 192 channels


def test_lora_rank_and_targets_are_configurable():
    state = trainable_state(new_model(load_config({**BASE, "model.adapter": "lora", "model.lora-rank": 4,
                                                   "model.lora-targets": "qkv,fc2"})))
    lora = [k for k in state if k.startswith("backbone.")]
    assert len(lora) == 12 * 2 * 2 and all(".attn.qkv." in k or ".mlp.fc2." in k for k in lora)
    assert state["backbone.base_model.model.blocks.0.mlp.fc2.lora_B.default.weight"].shape == (192, 4)
    with pytest.raises(ConfigError, match="model.lora-targets"):
        load_config({**BASE, "model.adapter": "lora", "model.lora-targets": "qkv,patch_embed"})


def test_lora_bytes_on_the_wire_are_its_parameter_bytes_plus_framing():
    state = trainable_state(new_model(load_config({**BASE, "model.adapter": "lora"})))
    parameter_bytes = sum(t.numel() * t.element_size() for t in state.values())
    wire = ArrayRecord(state).count_bytes()
    assert parameter_bytes <= wire <= 1.05 * parameter_bytes


def test_full_fine_tuning_sends_every_encoder_weight_and_the_head():
    cfg = load_config({**BASE, "model.adapter": "full"})
    state = trainable_state(new_model(cfg))
    encoder_keys = {f"backbone.{k}" for k, _ in encoder_for(cfg).vit.named_parameters()}
    assert set(state) == encoder_keys | {"head.fc.weight", "head.fc.bias"}


def test_a_lora_round_changes_only_what_it_sends_and_the_frozen_weights_stay():
    cfg = load_config({**BASE, "model.adapter": "lora", "model.head": "mlp"})
    start = trainable_state(new_model(cfg))
    state, metrics = LocalSite(cfg, 0).fit(RoundInputs(start, server_round=1))
    assert list(state) == list(start) and metrics["train-loss"] > 0
    changed = [k for k in state if not torch.equal(state[k], start[k])]
    assert any(".lora_B." in k for k in changed) and any(k.startswith("head.") for k in changed)
    frozen = encoder_for(cfg).vit.state_dict()["blocks.0.attn.qkv.weight"]
    model = new_model(cfg)
    assert torch.equal(model.backbone.base_model.model.blocks[0].attn.qkv.base_layer.weight, frozen)


def test_merged_export_loads_as_plain_encoder_weights_and_gives_the_same_outputs(tmp_path):
    cfg = load_config({**BASE, "model.adapter": "lora"})
    model = new_model(cfg)
    with torch.no_grad():  # make the low-rank update non-zero (B starts at zero)
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.02)
    model.eval()
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    encoder_file, head_file = model.export(tmp_path / "export")
    merged = create_encoder("vit-tiny", str(encoder_file), image_size=32)
    head = model.head
    head.load_state_dict(load_file(head_file))
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(head(merged(images.float() / 255)), expected, rtol=1e-4, atol=1e-4)
        base = create_encoder("vit-tiny", "", image_size=32)  # the un-adapted encoder differs
        assert not torch.allclose(head(base(images.float() / 255)), expected, atol=1e-4)
