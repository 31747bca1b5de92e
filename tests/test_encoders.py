import logging

import pytest
import torch
from safetensors.torch import save_file

from omnirad.encoders import EncoderWeightsError, create_encoder, encoder_input_size


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_encoder("vit-tiny", "", image_size=64)


def test_random_init_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        create_encoder("vit-tiny", "", image_size=32)
    assert any("RANDOM weights" in r.message for r in caplog.records)


def test_random_init_is_the_same_in_every_process(tiny):
    """The server and each site build their own encoder: random weights must agree."""
    torch.manual_seed(123)  # whatever the caller's RNG state
    other = create_encoder("vit-tiny", "", image_size=64)
    images = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(other(images), tiny(images))


def test_encoder_is_frozen_and_stays_in_eval(tiny):
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not tiny.vit.training


@pytest.mark.parametrize("size", [28, 64, 100, 224])
def test_any_input_size_gives_pooled_features_and_tokens(tiny, size):
    images = torch.rand(2, 1, size, size)
    assert tiny(images).shape == (2, tiny.num_features)
    tokens = tiny.patch_tokens(images, [1, 3, 11])
    side = tiny.input_size // tiny.patch_size
    assert [t.shape for t in tokens] == [torch.Size([2, tiny.num_features, side, side])] * 3


def test_patch14_models_get_inputs_rounded_to_whole_patches():
    assert encoder_input_size(64, 14) == 70 and encoder_input_size(224, 14) == 224


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file_loads_to_identical_features(tiny, tmp_path, suffix):
    state = {k: v.contiguous() for k, v in tiny.vit.state_dict().items()}
    path = tmp_path / f"vit-tiny{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_encoder("vit-tiny", str(path), image_size=64)
    images = torch.rand(3, 1, 64, 64)
    torch.testing.assert_close(loaded(images), tiny(images))


def test_local_weights_resize_position_embeddings(tiny, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.vit.state_dict().items()}, path)
    loaded = create_encoder("vit-tiny", str(path), image_size=96)
    assert loaded.vit.pos_embed.shape[1] == 1 + (96 // 8) ** 2
    assert loaded(torch.rand(1, 1, 96, 96)).shape == (1, 192)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(EncoderWeightsError, match="file not found: .*nope.safetensors"):
        create_encoder("vit-tiny", str(tmp_path / "nope.safetensors"))


def test_weights_of_another_architecture_fail_clearly(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.vit.state_dict().items()}, path)
    with pytest.raises(EncoderWeightsError, match="does not load into vit_small_patch16_224"):
        create_encoder("radiodino-s16", str(path), image_size=64)


def test_offline_hub_name_fails_fast_with_a_clear_message():
    with pytest.raises(EncoderWeightsError, match="Snarcy/OmniRad-small.*model.weights"):
        create_encoder("omnirad-small", "hub", image_size=56)


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="model.encoder.*'vit-huge'"):
        create_encoder("vit-huge")
