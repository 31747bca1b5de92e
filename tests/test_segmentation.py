"""Segmentation: the Dice/IoU metric against hand-computed cases, the decoder, and a site that learns."""

import numpy as np
import pytest
import torch
from torch import nn

from omnirad.adapters.decoder import SegmentationDecoder, default_token_layers, token_layers
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.encoders import create_encoder
from omnirad.metrics import segmentation_metrics
from omnirad.models import build_model, new_model
from omnirad.site import LocalSite, RoundInputs


def logits_of(prediction: np.ndarray, num_classes: int = 3) -> torch.Tensor:
    """Logits whose argmax is ``prediction``."""
    return nn.functional.one_hot(torch.as_tensor(prediction), num_classes).permute(0, 3, 1, 2).float()


def test_dice_and_iou_match_hand_computed_values():
    truth = np.zeros((2, 4, 4), np.int64)
    truth[0, 0, :4] = 1  # image 0: 4 organ pixels, 2 lesion pixels
    truth[0, 1, :2] = 2
    truth[1, 2, :2] = 1  # image 1: 2 organ pixels, no lesion
    prediction = np.zeros_like(truth)
    prediction[0, 0, :3] = 1  # 3 of the 4 organ pixels...
    prediction[0, 3, 0] = 1  # ...and one false positive; the lesion is missed
    prediction[1] = truth[1]  # image 1 is perfect
    metrics = segmentation_metrics(truth, logits_of(prediction), 3)
    # image 0: organ Dice 2*3/(4+4) = 0.75, lesion 0 -> 0.375; image 1: organ 1, lesion absent in both (left out) -> 1
    assert metrics["dice"] == pytest.approx((0.375 + 1.0) / 2)
    # image 0: organ IoU 3/5, lesion 0 -> 0.3; image 1: 1
    assert metrics["iou"] == pytest.approx((0.3 + 1.0) / 2)
    # background included: image 0 has 10 true and 12 predicted background pixels, 9 shared:
    # Dice 2*9/(10+12) -> (18/22 + 0.75 + 0)/3; image 1: 1
    assert metrics["dice-with-background"] == pytest.approx(((18 / 22 + 0.75 + 0.0) / 3 + 1.0) / 2)


def test_a_false_positive_on_an_empty_image_scores_zero_and_an_empty_agreement_is_left_out():
    truth = np.zeros((2, 4, 4), np.int64)
    prediction = np.zeros_like(truth)
    prediction[0, 0, 0] = 2  # image 0: a lesion where there is none
    metrics = segmentation_metrics(truth, logits_of(prediction), 3)
    assert metrics["dice"] == 0.0 and metrics["iou"] == 0.0  # image 1 (nothing anywhere) is left out
    assert np.isnan(segmentation_metrics(truth, logits_of(np.zeros_like(truth)), 3)["dice"])


@pytest.mark.parametrize(("encoder_name", "size"), [("vit-tiny", 32), ("vit-tiny", 48), ("vit-tiny", 64), ("omnirad-small", 56), ("omnirad-small", 64)])
def test_decoder_outputs_one_map_per_class_at_the_image_size(encoder_name, size):
    encoder = create_encoder(encoder_name, "", image_size=size)
    layers = default_token_layers(encoder.depth)
    tokens = torch.cat(encoder.patch_tokens(torch.rand(2, 1, size, size), layers), dim=1)
    decoder = SegmentationDecoder(encoder.num_features, len(layers), num_classes=3, output_size=size)
    assert decoder(tokens).shape == (2, 3, size, size)


def test_decoder_reads_blocks_4_8_12_by_default_and_has_no_batchnorm():
    assert default_token_layers(12) == [3, 7, 11]
    cfg = load_config({"data.task": "segmentation", "model.adapter": "decoder", "data.size": 32})
    model = new_model(cfg)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_decoder_layers_are_configurable_and_checked_against_the_encoder_depth():
    encoder = create_encoder("vit-tiny", "", image_size=32)
    cfg = load_config({"data.task": "segmentation", "model.adapter": "decoder", "model.decoder-layers": "2,12"})
    assert token_layers(cfg.model, encoder.depth) == [1, 11]
    too_deep = load_config({"data.task": "segmentation", "model.adapter": "decoder", "model.decoder-layers": "13"})
    with pytest.raises(ConfigError, match="model.decoder-layers.*blocks 1 to 12"):
        build_model(too_deep, encoder)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"data.task": "segmentation"}, "model.adapter"),  # an MLP head cannot segment
    ({"model.adapter": "decoder"}, "model.adapter"),  # a decoder needs masks
    ({"data.task": "binary-class"}, "data.task"),  # the embedded data has regions or masks
    ({"data.task": "segmentation", "model.adapter": "decoder", "model.decoder-layers": "4,x"}, "model.decoder-layers"),
])
def test_mismatched_task_and_model_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides)


def test_a_site_learns_to_segment_the_embedded_masks():
    cfg = load_config({"data.num-train": 240, "data.num-test": 40, "data.size": 32, "data.num-sites": 2,
                       "data.partition": "iid", "data.task": "segmentation", "model.adapter": "decoder",
                       "train.local-epochs": 3})
    site = LocalSite(cfg, 0)
    assert site.train_set.labels.shape[1:] == (32, 32)
    start = {k: v.clone() for k, v in new_model(cfg).state_dict().items()}
    state, _ = site.fit(RoundInputs(start, server_round=1))
    before, after = site.evaluate(RoundInputs(start, 0)), site.evaluate(RoundInputs(state, 0))
    assert after["loss"] < before["loss"] and after["dice"] > before["dice"]
    assert {"dice", "iou", "dice-with-background"} <= set(after)


def write_medsegbench_site(path, seed: int, size: int = 48, count: int = 60) -> str:
    """A hospital's file in MedSegBench's format: RGB images and (N, H, W) masks, here from the embedded data."""
    from omnirad.data import synthetic

    split = synthetic.generate(count, size=size, seed=seed)
    rgb = np.repeat(split.images[..., None], 3, axis=-1)
    np.savez(path, train_images=rgb[:48], train_label=split.masks[:48], val_images=rgb[48:], val_label=split.masks[48:])
    return str(path)


def test_medsegbench_site_files_train_at_the_configured_size(tmp_path):
    files = [write_medsegbench_site(tmp_path / f"site{k}.npz", seed=10 + k) for k in range(2)]
    cfg = load_config({"data.dataset": "files", "data.site-files": ",".join(files), "data.test-file": files[0],
                       "data.num-sites": 2, "data.task": "segmentation", "data.num-classes": 3,
                       "data.size": 32, "model.adapter": "decoder", "train.local-epochs": 3})
    site = LocalSite(cfg, 1)
    assert site.train_set.data.images.shape == (48, 32, 32, 3)  # resized from 48 px
    assert set(np.unique(site.train_set.labels)) <= {0, 1, 2}  # nearest-neighbour masks keep their classes
    start = {k: v.clone() for k, v in new_model(cfg).state_dict().items()}
    state, _ = site.fit(RoundInputs(start, server_round=1))
    assert site.evaluate(RoundInputs(state, 0))["dice"] > site.evaluate(RoundInputs(start, 0))["dice"]


def test_lora_decoder_trains_lora_on_the_encoder_and_the_decoder_on_images():
    cfg = load_config({"data.task": "segmentation", "model.adapter": "lora-decoder", "data.size": 32, "model.lora-rank": 2})
    model = new_model(cfg)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("decoder.") for n in trainable)
    assert any(".lora_" in n for n in trainable) and any(n.startswith("decoder.") for n in trainable)
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 3, 32, 32)
    logits.sum().backward()
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0  # the decoder's loss reaches the encoder's LoRA
