"""The on-disk feature cache: hits, misses, invalidation on every key, and safe writes."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from omnirad import feature_cache
from omnirad.configure import load_config
from omnirad.encoders import create_encoder
from omnirad.feature_cache import cached_features
from omnirad.site import LocalSite

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("vit-tiny", "", image_size=32)


class Counter:
    def __init__(self, encoder, images):
        self.calls, self.encoder, self.images = 0, encoder, images

    def __call__(self):
        self.calls += 1
        with torch.no_grad():
            return self.encoder(torch.from_numpy(self.images).float().unsqueeze(1) / 255)


def test_second_call_is_a_hit_with_identical_features(tmp_path, encoder):
    first = Counter(encoder, IMAGES)
    a = cached_features(tmp_path, encoder, IMAGES, first)
    second = Counter(encoder, IMAGES)
    b = cached_features(tmp_path, encoder, IMAGES, second)
    assert (first.calls, second.calls) == (1, 0)
    torch.testing.assert_close(a, b)


def test_other_images_are_a_miss(tmp_path, encoder):
    cached_features(tmp_path, encoder, IMAGES, Counter(encoder, IMAGES))
    other = IMAGES.copy()
    other[0, 0, 0] ^= 1  # one pixel differs
    counter = Counter(encoder, other)
    cached_features(tmp_path, encoder, other, counter)
    assert counter.calls == 1


def test_other_weights_or_preprocessing_invalidate(tmp_path, encoder):
    cache = tmp_path / "cache"
    cached_features(cache, encoder, IMAGES, Counter(encoder, IMAGES))
    state = {k: v.clone().contiguous() for k, v in encoder.vit.state_dict().items()}
    state["blocks.0.mlp.fc1.bias"] += 1.0
    save_file(state, tmp_path / "changed.safetensors")
    changed = create_encoder("vit-tiny", str(tmp_path / "changed.safetensors"), image_size=32)
    resized = create_encoder("vit-tiny", "", image_size=48)  # other input size: other preprocessing
    for other in (changed, resized):
        counter = Counter(other, IMAGES)
        cached_features(cache, other, IMAGES, counter)
        assert counter.calls == 1
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_an_interrupted_write_leaves_no_entry(tmp_path, encoder, monkeypatch):
    real_save = feature_cache.save_file

    def crash(tensors, path):
        real_save(tensors, path)
        with open(path, "r+b") as f:
            f.truncate(10)  # a half-written file...
        raise KeyboardInterrupt  # ...and the process stops

    monkeypatch.setattr(feature_cache, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_features(tmp_path, encoder, IMAGES, Counter(encoder, IMAGES))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    counter = Counter(encoder, IMAGES)
    cached_features(tmp_path, encoder, IMAGES, counter)
    assert counter.calls == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1


def test_an_unreadable_entry_is_encoded_again(tmp_path, encoder):
    cached_features(tmp_path, encoder, IMAGES, Counter(encoder, IMAGES))
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a tensor")
    counter = Counter(encoder, IMAGES)
    cached_features(tmp_path, encoder, IMAGES, counter)
    assert counter.calls == 1


def test_a_site_with_the_cache_on_reuses_features_across_processes(tmp_path):
    cfg = load_config({"data.num-train": 200, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
                       "data.min-site-samples": 10, "model.feature-cache": True, "model.cache-dir": str(tmp_path)})
    first = LocalSite(cfg, 0).train_set.inputs
    entries = sorted(tmp_path.glob("*.safetensors"))
    again = LocalSite(cfg, 0).train_set.inputs  # a fresh LocalSite, as a new ClientApp process builds
    torch.testing.assert_close(first, again)
    assert sorted(tmp_path.glob("*.safetensors")) == entries and len(entries) == 1


def test_pooled_features_and_tokens_of_other_blocks_are_separate_entries(tmp_path, encoder):
    cached_features(tmp_path, encoder, IMAGES, Counter(encoder, IMAGES), kind="pooled")
    for kind in ("tokens:3,7,11", "tokens:1,11"):
        counter = Counter(encoder, IMAGES)
        cached_features(tmp_path, encoder, IMAGES, counter, kind=kind)
        assert counter.calls == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_a_decoder_site_caches_its_token_maps(tmp_path):
    cfg = load_config({"data.num-train": 120, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
                       "data.min-site-samples": 10, "data.task": "segmentation", "model.adapter": "decoder",
                       "model.feature-cache": True, "model.cache-dir": str(tmp_path)})
    tokens = LocalSite(cfg, 0).train_set.inputs
    assert tokens.shape[1:] == (3 * 192, 4, 4)  # three blocks of vit-tiny, 32 px / 8 px patches
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    torch.testing.assert_close(LocalSite(cfg, 0).train_set.inputs, tokens)


def test_lora_does_not_cache_and_says_why(tmp_path, caplog):
    cfg = load_config({"data.num-train": 120, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
                       "data.min-site-samples": 10, "model.adapter": "lora",
                       "model.feature-cache": True, "model.cache-dir": str(tmp_path)})
    images = LocalSite(cfg, 0).train_set.inputs
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 32, 32)
    assert list(tmp_path.iterdir()) == []
    assert "feature-cache is ignored for model.adapter=lora" in caplog.text
