"""Classification metrics as MedMNIST defines them, plus macro-F1 (OmniRad's selection metric)."""

from __future__ import annotations

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import f1_score

from omnirad.tasks import MULTI_LABEL, TaskSpec


def classification_metrics(labels: np.ndarray, logits: torch.Tensor, task: TaskSpec) -> dict[str, float]:
    """Accuracy and AUC (MedMNIST's evaluator) and macro-F1 of a batch of predictions.

    AUC is one-vs-rest per class (per label for multi-label), averaged. A site's local split may
    lack some classes (label skew): AUC is undefined for those, so the average is then taken over
    the classes present, and ``auc_classes`` says how many that was.
    """
    scores = task.scores(torch.as_tensor(logits))
    labels = np.asarray(labels)
    if task.multi_label:
        columns = [(labels[:, c], scores[:, c]) for c in range(task.num_outputs)]
        predictions = (scores > 0.5).astype(int)
        f1 = f1_score(labels, predictions, average="macro", zero_division=0)
    else:
        labels = labels.reshape(-1)
        columns = [((labels == c).astype(int), scores[:, c]) for c in range(task.num_outputs)]
        f1 = f1_score(labels, scores.argmax(axis=1), average="macro", labels=list(range(task.num_outputs)), zero_division=0)
    present = [(y, s) for y, s in columns if 0 < y.sum() < len(y)]
    if len(present) == task.num_outputs:
        auc = float(getAUC(labels, scores, task.kind))
    elif present:
        auc = float(np.mean([getAUC(y, s, "binary-class") for y, s in present]))
    else:
        auc = float("nan")
    kind = MULTI_LABEL if task.multi_label else "multi-class"  # binary and ordinal score as multi-class
    return {
        "accuracy": float(getACC(labels, scores, kind)),
        "macro_f1": float(f1),
        "auc": auc,
        "auc_classes": float(len(present)),
    }
