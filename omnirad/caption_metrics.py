"""Caption scores of the kind ROCOv2 and the ImageCLEFmedical caption task report, computed by the libraries:
BLEU-4 and ROUGE-L (F-measure) by torchmetrics, CIDEr-D by pycocoevalcap. METEOR and SPICE need
Java, which sites are not assumed to have: they are left out.

``finding-accuracy`` is the embedded data's check of content: the share of captions that name the
reference's body region and finding and no other (by the words every phrasing of them contains).
"""

from __future__ import annotations

from collections.abc import Sequence

from pycocoevalcap.cider.cider import Cider
from torchmetrics.functional.text import bleu_score, rouge_score

from omnirad.data.embedded_captions import FINDING_KEYS, REGION_KEYS


def caption_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4, mean ROUGE-L F-measure, CIDEr-D and finding accuracy of generated captions
    against one reference each."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need one hypothesis per reference, got {len(hypotheses)} for {len(references)}")
    bleu = float(bleu_score(list(hypotheses), [[r] for r in references], n_gram=4))
    rouge = float(rouge_score(list(hypotheses), list(references), rouge_keys="rougeL")["rougeL_fmeasure"])
    return {"bleu-4": bleu, "rouge-l": rouge, "cider": cider(references, hypotheses),
            "finding-accuracy": finding_accuracy(references, hypotheses)}


def cider(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """CIDEr-D (pycocoevalcap), its document frequencies taken from these references."""
    score, _ = Cider().compute_score({i: [r] for i, r in enumerate(references)},
                                     {i: [h] for i, h in enumerate(hypotheses)})
    return float(score)


def _named(caption: str, keys: dict[str, tuple[str, ...]]) -> frozenset[str]:
    words = set(caption.lower().split())
    return frozenset(name for name, marks in keys.items() if words & set(marks))


def finding_accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Share of captions naming exactly the reference's region and finding; NaN when no reference
    names one (captions not from the embedded templates)."""
    scored = [(_named(r, REGION_KEYS), _named(r, FINDING_KEYS), h) for r, h in zip(references, hypotheses, strict=True)]
    scored = [(region, finding, h) for region, finding, h in scored if region and finding]
    if not scored:
        return float("nan")
    right = sum(_named(h, REGION_KEYS) == region and _named(h, FINDING_KEYS) == finding for region, finding, h in scored)
    return right / len(scored)
