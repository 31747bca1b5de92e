"""Templated captions of the embedded images, from what the generator knows: imaging style, body
region and finding ("axial ct of the chest with multiple nodules").

Every fact in a caption is a property of the pixels, so a decoder must read the image to get it
right; the wording varies (two phrasings of each style, region and finding, two sentence orders,
drawn per sample) so that a caption is not a lookup of three words, and the scores of a perfect
reader stay below 1. The vocabulary is every word the templates can produce, identical on every
machine: the embedded data needs no vocabulary agreement between sites.
"""

from __future__ import annotations

from functools import cache
from itertools import product

import numpy as np

from omnirad.captions import build_vocabulary
from omnirad.data import synthetic

STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "ct": ("axial ct", "ct scan"), "mr": ("axial mri", "mr image"),
    "xray": ("radiograph", "x ray"), "us": ("ultrasound", "sonogram"),
}
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "head": ("head", "brain"), "chest": ("chest", "thorax"),
    "abdomen": ("abdomen", "abdominal cavity"), "pelvis": ("pelvis", "pelvic region"),
}
FINDING_WORDS: dict[str, tuple[str, ...]] = {
    "normal": ("no abnormality", "normal appearance"), "mass": ("a mass", "a solitary mass"),
    "nodules": ("multiple nodules", "several nodules"), "diffuse": ("diffuse reticular change", "diffuse disease"),
}
# The word of each region and finding that every phrasing of it contains (finding accuracy reads these).
REGION_KEYS: dict[str, tuple[str, ...]] = {"head": ("head", "brain"), "chest": ("chest", "thorax"), "abdomen": ("abdomen", "abdominal"),
               "pelvis": ("pelvis", "pelvic")}
FINDING_KEYS: dict[str, tuple[str, ...]] = {"normal": ("no", "normal"), "mass": ("mass",), "nodules": ("nodules",), "diffuse": ("diffuse",)}
TEMPLATES = ("{style} of the {region} with {finding}", "{finding} in the {region} on {style}")
CAPTION_SEED = 22  # the wording's own random stream, apart from the images'


def caption(style: str, region: str, finding: str, wording: np.ndarray) -> str:
    """One caption; ``wording``: four indices (template, style, region, finding phrasing)."""
    return TEMPLATES[wording[0] % 2].format(style=STYLE_WORDS[style][wording[1] % 2],
                                            region=REGION_WORDS[region][wording[2] % 2],
                                            finding=FINDING_WORDS[finding][wording[3] % 2])


def embedded_captions(split: synthetic.SyntheticSplit) -> list[str]:
    """One caption per image of ``split``; the wording depends on the sample's index alone."""
    wording = np.random.default_rng(CAPTION_SEED).integers(0, 2, (len(split.labels), 4))
    return [caption(synthetic.MODALITIES[m], synthetic.CLASS_NAMES[r], synthetic.FINDING_NAMES[f], wording[i])
            for i, (m, r, f) in enumerate(zip(split.modalities, split.labels, split.findings, strict=True))]


@cache
def embedded_vocabulary() -> tuple[str, ...]:
    """Every word the templates can produce, special tokens first."""
    every = [caption(s, r, f, np.array(w)) for s, r, f in product(STYLE_WORDS, REGION_WORDS, FINDING_WORDS)
             for w in product(range(2), repeat=4)]
    return build_vocabulary(every)
