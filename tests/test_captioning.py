"""The captioning branch: tokenizer, embedded captions, metrics against the libraries, the decoder."""

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from omnirad.adapters.caption_decoder import CaptionDecoder
from omnirad.caption_metrics import caption_metrics
from omnirad.captions import BOS_ID, EOS_ID, SPECIAL_TOKENS, build_vocabulary, decode_captions, encode_captions
from omnirad.config import ConfigError
from omnirad.config.schema import TrainConfig
from omnirad.configure import load_config
from omnirad.data import synthetic
from omnirad.data.embedded_captions import FINDING_KEYS, REGION_KEYS, embedded_captions, embedded_vocabulary
from omnirad.data.sites import task_info
from omnirad.multitask import site_view
from omnirad.tasks import CAPTIONING, PAD_ID, TaskSpec
from omnirad.training import evaluate_model, train_model

REFS = ["axial ct of the chest with multiple nodules", "radiograph of the pelvis with a mass",
        "mr image of the head with no abnormality"]
HYPS = ["axial ct of the chest with several nodules", "radiograph of the pelvis with a solitary mass",
        "ct scan of the head with no abnormality"]


def test_captions_round_trip_through_the_word_level_tokenizer():
    vocabulary = build_vocabulary(REFS)
    assert vocabulary[:4] == SPECIAL_TOKENS and "nodules" in vocabulary
    ids = encode_captions(["Axial CT of the chest, with a mass"], vocabulary, 12)
    assert ids[0, 0] == BOS_ID and (ids[0] == EOS_ID).sum() == 1 and ids[0, -1] == PAD_ID
    assert SPECIAL_TOKENS.index("[UNK]") in ids[0]  # the comma: a word the vocabulary lacks
    assert decode_captions(ids, vocabulary) == ["axial ct of the chest with a mass"]  # special tokens dropped
    cut = encode_captions([REFS[0]], vocabulary, 5)
    assert cut[0, -1] == EOS_ID and decode_captions(cut, vocabulary) == ["axial ct of"]


def test_embedded_captions_name_style_region_and_finding_of_each_image():
    split = synthetic.generate(64, size=32)
    captions = embedded_captions(split)
    assert len(set(captions)) > 32  # wording varies, not one caption per class
    for caption, region, finding in zip(captions, split.labels, split.findings, strict=True):
        words = set(caption.split())
        named_regions = [name for name, keys in REGION_KEYS.items() if words & set(keys)]
        named_findings = [name for name, keys in FINDING_KEYS.items() if words & set(keys)]
        assert named_regions == [synthetic.CLASS_NAMES[region]]
        assert named_findings == [synthetic.FINDING_NAMES[finding]]
    ids = encode_captions(captions, embedded_vocabulary(), 16)
    assert decode_captions(ids, embedded_vocabulary()) == captions  # every template word is in the vocabulary


def test_metrics_agree_with_the_libraries_on_known_pairs():
    ours = caption_metrics(REFS, HYPS)
    gts, res = {i: [r] for i, r in enumerate(REFS)}, {i: [h] for i, h in enumerate(HYPS)}
    assert ours["bleu-4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-6)  # two libraries
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])
    # ROUGE-L F1 by hand, (precision, recall) from the longest common subsequence: 7 of 8 words both
    # ways; 7 of 8 generated, all 7 of the reference; 6 of 8 both ways
    f1 = [2 * p * r / (p + r) for p, r in ((7 / 8, 7 / 8), (7 / 8, 7 / 7), (6 / 8, 6 / 8))]
    assert ours["rouge-l"] == pytest.approx(np.mean(f1), abs=1e-6)
    assert ours["finding-accuracy"] == 1.0
    perfect = caption_metrics(REFS, REFS)
    assert perfect["bleu-4"] == perfect["rouge-l"] == 1.0
    wrong = caption_metrics(REFS, ["ct scan of the pelvis with a mass"] * 3)  # right for the second only
    assert wrong["finding-accuracy"] == pytest.approx(1 / 3)


def test_the_decoder_overfits_a_handful_of_captions():
    torch.manual_seed(0)
    vocabulary = build_vocabulary(REFS)
    task = TaskSpec(CAPTIONING, vocabulary)
    labels = encode_captions(REFS, vocabulary, 12)
    tokens = torch.randn(3, 2 * 8, 4, 4)  # two blocks of 8-wide tokens on a 4 x 4 grid
    decoder = CaptionDecoder(8, 2, 16, len(vocabulary), 12, width=32, heads=2)
    before = evaluate_model(decoder, tokens, labels, task)
    train_model(decoder, tokens, labels, task, train=TrainConfig(lr=1e-2, batch_size=3), epochs=60)
    after = evaluate_model(decoder, tokens, labels, task)
    assert after["loss"] < 0.1 * before["loss"]
    assert after["bleu-4"] == pytest.approx(1.0) and after["cider"] > before["cider"]
    assert decode_captions(decoder(tokens).numpy(), vocabulary) == REFS
    assert decode_captions(decoder.beam_search(decoder.encode_memory(tokens), 3).numpy(), vocabulary) == REFS


def test_beam_search_of_one_beam_is_greedy_and_wider_beams_find_likelier_captions():
    torch.manual_seed(1)
    decoder = CaptionDecoder(8, 1, 4, 12, 8, width=16, heads=2).eval()
    memory = decoder.encode_memory(torch.randn(16, 8, 2, 2))
    greedy = decoder.greedy(memory)
    assert torch.equal(decoder.beam_search(memory, 1), greedy)
    wide = decoder.beam_search(memory, 4)
    assert wide.shape == greedy.shape and (wide[:, 0] == BOS_ID).all()

    def mean_log_probability(words: torch.Tensor) -> torch.Tensor:
        logits = decoder.next_word_logits(memory, words[:, :-1]).log_softmax(dim=-1)
        picked = logits.gather(2, words[:, 1:, None])[..., 0]
        counted = (words[:, 1:] != PAD_ID).float()
        return (picked * counted).sum(dim=1) / counted.sum(dim=1)

    with torch.no_grad():
        assert mean_log_probability(wide).mean() > mean_log_probability(greedy).mean()


def test_captioning_configuration_and_its_refusals():
    cfg = load_config({"data.task": "captioning", "model.adapter": "caption-decoder", "data.size": 32})
    task = task_info(cfg.data)
    assert task.captioning and task.label_names == embedded_vocabulary() and task.selection_metric == "cider"
    with pytest.raises(ConfigError, match="model.adapter"):
        load_config({"data.task": "captioning", "model.adapter": "linear"})
    with pytest.raises(ConfigError, match="model.adapter"):
        load_config({"model.adapter": "caption-decoder"})
    with pytest.raises(ConfigError, match="privacy.dp"):
        load_config({"data.task": "captioning", "model.adapter": "caption-decoder", "privacy.dp": True})
    with pytest.raises(ConfigError, match="model.caption-width"):
        load_config({"data.task": "captioning", "model.adapter": "caption-decoder", "model.caption-width": 30})


def test_a_captioning_site_joins_a_multitask_federation_with_its_own_decoder():
    cfg = load_config({"data.num-sites": 4, "data.size": 32, "multitask.site-tasks": "region,region,captions,captions"})
    captions = site_view(cfg, 2)
    assert task_info(captions.data).captioning and captions.model.adapter == "caption-decoder"
    assert site_view(cfg, 0).model.adapter == "linear"
    with pytest.raises(ConfigError, match="model.adapter"):
        load_config({"data.num-sites": 2, "model.adapter": "lora", "multitask.site-tasks": "region,captions"})
