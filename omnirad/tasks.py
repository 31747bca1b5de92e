"""What a task is: its kind (as MedMNIST and MedSegBench name them), labels, loss and scores.

MedMNIST trains every single-label task (multi-class, binary, ordinal) with cross-entropy on one
output per class, and multi-label tasks (ChestMNIST) with a sigmoid per label; metrics follow
MedMNIST's evaluator for the same kinds. Segmentation (MedSegBench masks) trains with MONAI's
Dice + cross-entropy loss on one output map per pixel class, background included. Captioning
trains a text decoder with teacher forcing: cross-entropy of each next word given the words before
it, padding ignored; its labels are token ids and its label names the vocabulary (``omnirad.captions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

MULTI_CLASS = "multi-class"
BINARY = "binary-class"
ORDINAL = "ordinal-regression"
MULTI_LABEL = "multi-label, binary-class"
SEGMENTATION = "segmentation"
CAPTIONING = "captioning"
CLASSIFICATION_KINDS = (MULTI_CLASS, BINARY, ORDINAL, MULTI_LABEL)
KINDS = (*CLASSIFICATION_KINDS, SEGMENTATION, CAPTIONING)
PAD_ID = 0  # captioning: the padding token's id, first in every vocabulary; the loss ignores it


# The full scale of a selection metric that does not run from 0 to 1: pycocoevalcap's CIDEr-D is
# 10 x a mean cosine similarity (0 to 10). A multi-task run divides by it, so every task weighs alike.
SELECTION_FULL_SCALE = {"cider": 10.0}


@dataclass(frozen=True)
class TaskSpec:
    """``label_names``: the classes (labels) of a classification task; for segmentation the pixel
    classes, background first; for captioning the vocabulary, special tokens first."""

    kind: str
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind '{self.kind}'; known: {', '.join(KINDS)}")

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    @property
    def multi_label(self) -> bool:
        return self.kind == MULTI_LABEL

    @property
    def segmentation(self) -> bool:
        return self.kind == SEGMENTATION

    @property
    def captioning(self) -> bool:
        return self.kind == CAPTIONING

    @property
    def family(self) -> str:
        """What kind of adapter serves the task: ``segmentation``, ``captioning`` or ``classification``."""
        return self.kind if self.kind in (SEGMENTATION, CAPTIONING) else "classification"

    @property
    def selection_metric(self) -> str:
        """The validation metric that picks the best round: foreground Dice, CIDEr (consensus with
        the reference, weighting the words that tell captions apart), or OmniRad's macro-F1."""
        return {SEGMENTATION: "dice", CAPTIONING: "cider"}.get(self.kind, "macro-f1")

    @property
    def headline_metrics(self) -> tuple[str, ...]:
        """The metrics printed and plotted per round; the first is the one shown per site."""
        if self.captioning:
            return ("cider", "bleu-4", "rouge-l", "finding-accuracy")
        return ("dice", "iou", "dice-with-background") if self.segmentation else ("accuracy", "macro-f1", "auc")

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        """Labels as the loss wants them: class indices (per pixel for masks), or 0/1 floats per label."""
        if self.segmentation or self.captioning:
            return torch.as_tensor(labels, dtype=torch.long)
        if self.multi_label:
            return torch.as_tensor(labels, dtype=torch.float32)
        return torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Captioning: ``logits`` (B, T-1, V) predict the words ``targets[:, 1:]`` (the first is BOS)."""
        if self.captioning:  # a decoder shorter than the captions learns their beginnings
            words = targets[:, 1 : logits.shape[1] + 1]
            return nn.functional.cross_entropy(logits.transpose(1, 2), words, ignore_index=PAD_ID)
        if self.segmentation:
            from monai.losses.dice import DiceCELoss  # only here: see omnirad.metrics.segmentation_metrics

            return cast(torch.Tensor, DiceCELoss(to_onehot_y=True, softmax=True)(logits, targets.unsqueeze(1)))
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return nn.functional.cross_entropy(logits, targets)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Per-class probabilities (softmax), or per-label probabilities (sigmoid)."""
        logits = logits.detach().float()
        return (logits.sigmoid() if self.multi_label else logits.softmax(dim=1)).numpy()
