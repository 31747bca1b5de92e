"""What a classification task is: its kind (as MedMNIST names them), labels, loss and scores.

MedMNIST trains every single-label task (multi-class, binary, ordinal) with cross-entropy on one
output per class, and multi-label tasks (ChestMNIST) with a sigmoid per label; metrics follow
MedMNIST's evaluator for the same kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MULTI_CLASS = "multi-class"
BINARY = "binary-class"
ORDINAL = "ordinal-regression"
MULTI_LABEL = "multi-label, binary-class"
KINDS = (MULTI_CLASS, BINARY, ORDINAL, MULTI_LABEL)


@dataclass(frozen=True)
class TaskSpec:
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

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        """Labels as the loss wants them: class indices, or 0/1 floats per label."""
        if self.multi_label:
            return torch.as_tensor(labels, dtype=torch.float32)
        return torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return nn.functional.cross_entropy(logits, targets)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Per-class probabilities (softmax), or per-label probabilities (sigmoid)."""
        logits = logits.detach().float()
        return (logits.sigmoid() if self.multi_label else logits.softmax(dim=1)).numpy()
