"""Classification metrics as MedMNIST defines them, plus macro-F1 (OmniRad's selection metric)."""

from __future__ import annotations

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import f1_score

MULTI_CLASS = "multi-class"


def classification_metrics(labels: np.ndarray, logits: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and AUC of multi-class predictions.

    AUC is MedMNIST's: one-vs-rest per class, averaged. A site's local split may lack some classes
    (label skew); one-vs-rest AUC is undefined for those, so the average is then taken over the
    classes present, and ``auc_classes`` says how many that was.
    """
    scores = torch.as_tensor(logits).float().softmax(dim=1).numpy()
    labels = np.asarray(labels).reshape(-1)
    num_classes = scores.shape[1]
    present = [c for c in range(num_classes) if 0 < (labels == c).sum() < len(labels)]
    if len(present) == num_classes:
        auc = float(getAUC(labels, scores, MULTI_CLASS))
    elif present:
        auc = float(np.mean([getAUC((labels == c).astype(int), scores[:, c], "binary-class") for c in present]))
    else:
        auc = float("nan")
    predictions = scores.argmax(axis=1)
    return {
        "accuracy": float(getACC(labels, scores, MULTI_CLASS)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", labels=list(range(num_classes)), zero_division=0)),
        "auc": auc,
        "auc_classes": float(len(present)),
    }
