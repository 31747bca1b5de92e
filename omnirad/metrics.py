"""Task metrics: classification as MedMNIST defines it plus macro-F1 (OmniRad's selection metric);
segmentation as Dice and IoU per image over the foreground classes; captioning as BLEU-4, ROUGE-L,
CIDEr (``omnirad.caption_metrics``)."""

from __future__ import annotations

import resource

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import f1_score

from omnirad.captions import decode_captions
from omnirad.data.labelled import volume_labels
from omnirad.tasks import MULTI_LABEL, TaskSpec

VOLUME_SCORES = ("mean", "max")
CALIBRATION_BINS = 15


def calibration_error(labels: np.ndarray, scores: np.ndarray, multi_label: bool) -> float:
    """Expected calibration error (15 equal-width confidence bins, L1): how far the probability a
    hospital receives is from how often it is right: of the top class per image, or for multi-label
    of each label's stated probability against how often the label is present, averaged over labels. Written here because torchmetrics' equal (tests/test_metrics.py compares them)
    costs seconds of import in every per-message ClientApp process."""
    if multi_label:
        per_label = [_binned_gap(s, y.astype(bool)) for y, s in zip(labels.T, scores.T, strict=True)]
        return float(np.mean(per_label))
    return _binned_gap(scores.max(axis=1), scores.argmax(axis=1) == labels)


def _binned_gap(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of images."""
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    gap = 0.0
    for b in np.unique(bins):
        inside = bins == b
        gap += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(gap)


def classification_metrics(labels: np.ndarray, logits: torch.Tensor, task: TaskSpec) -> dict[str, float]:
    """Accuracy and AUC (MedMNIST's evaluator) and macro-F1 of a batch of predictions."""
    return score_metrics(labels, task.scores(torch.as_tensor(logits)), task)


def volume_metrics(labels: np.ndarray, logits: torch.Tensor, task: TaskSpec, volumes: np.ndarray,
                   pooling: str = "mean") -> dict[str, float]:
    """Classification metrics per volume (``volume_*``): a volume's scores are the mean or max of
    its slices' probabilities, its label the highest of its slices' (``volume_labels``)."""
    _, pooled = pool_volumes(task.scores(torch.as_tensor(logits)), volumes, pooling, task.multi_label)
    found = score_metrics(volume_labels(labels, volumes)[1], pooled, task)
    return {f"volume_{key}": value for key, value in found.items() if key != "auc_classes"}


def pool_volumes(scores: np.ndarray, volumes: np.ndarray, pooling: str, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each volume's id and its scores: the mean or max of its slices' probabilities (class
    probabilities renormalised to sum to one; per-label ones left as they are)."""
    ids = np.unique(volumes)
    pool = np.mean if pooling == "mean" else np.max
    pooled = np.stack([pool(scores[volumes == v], axis=0) for v in ids])
    return ids, pooled if multi_label else pooled / pooled.sum(axis=1, keepdims=True)


def score_metrics(labels: np.ndarray, scores: np.ndarray, task: TaskSpec) -> dict[str, float]:
    """Accuracy and AUC (MedMNIST's evaluator), macro-F1 and the expected calibration error of
    class probabilities.

    AUC is one-vs-rest per class (per label for multi-label), averaged. A site's local split may
    lack some classes (label skew): AUC is undefined for those, so the average is then taken over
    the classes present, and ``auc_classes`` says how many that was. A single example (a site
    validating on one volume) is scored twice: MedMNIST's evaluator squeezes one to a scalar.
    """
    labels = np.asarray(labels)
    if len(labels) == 1:
        labels, scores = np.concatenate([labels, labels]), np.concatenate([scores, scores])
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
        "ece": calibration_error(labels, scores, task.multi_label),
    }


def task_metrics(labels: np.ndarray, logits: torch.Tensor, task: TaskSpec, volumes: np.ndarray | None = None,
                 volume_score: str = "mean") -> dict[str, float]:
    """The metrics of ``task``'s kind for a batch of predictions, and per volume where the images
    are slices of volumes (classification); all NaN when the predictions are (a model poisoned by a
    NaN update has no accuracy worth reporting, and sklearn refuses NaN)."""
    if task.captioning:  # ``logits``: generated token ids
        # imported here: torchmetrics and pycocoevalcap cost every ClientApp process of the other tasks
        from omnirad.caption_metrics import caption_metrics

        return caption_metrics(decode_captions(labels, task.label_names),
                               decode_captions(torch.as_tensor(logits).long().numpy(), task.label_names))
    if not torch.isfinite(torch.as_tensor(logits)).all():
        names = ("dice", "iou", "dice-with-background") if task.segmentation else ("accuracy", "macro_f1", "auc")
        return dict.fromkeys(names, float("nan"))
    if task.segmentation:
        return segmentation_metrics(labels, logits, task.num_outputs)
    per_volume = {} if volumes is None else volume_metrics(labels, logits, task, volumes, volume_score)
    return {**classification_metrics(labels, logits, task), **per_volume}


def segmentation_metrics(masks: np.ndarray, logits: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean Dice and IoU over images of each image's mean over foreground classes (MONAI).

    Within an image, a class absent from both the prediction and the ground truth is left out (it
    is neither right nor wrong); one predicted but absent from the ground truth scores 0. An image
    with no foreground class in either is left out of the mean. ``dice-with-background`` includes
    class 0, an extra figure only: background dominates it and flatters every model.
    """
    # Imported here: importing MONAI loads all its submodules (seconds per process), and every
    # ClientApp process of a classification site would pay for it without using it.
    from monai.metrics.meandice import compute_dice
    from monai.metrics.meaniou import compute_iou

    prediction = _one_hot(torch.as_tensor(logits).argmax(dim=1), num_classes)
    truth = _one_hot(torch.as_tensor(masks, dtype=torch.long), num_classes)
    absent = (prediction.sum(dim=(2, 3)) == 0) & (truth.sum(dim=(2, 3)) == 0)
    dice = compute_dice(prediction, truth, include_background=True, ignore_empty=False).masked_fill(absent, float("nan"))
    iou = compute_iou(prediction, truth, include_background=True, ignore_empty=False).masked_fill(absent, float("nan"))
    return {
        "dice": _mean_of_image_means(dice[:, 1:]),
        "iou": _mean_of_image_means(iou[:, 1:]),
        "dice-with-background": _mean_of_image_means(dice),
    }


def _one_hot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(indices, num_classes).permute(0, 3, 1, 2).float()


def _mean_of_image_means(scores: torch.Tensor) -> float:
    """(N, C) scores with NaN for classes left out: mean over images of each image's class mean."""
    scored = ~scores.isnan()
    per_image = scores.nan_to_num(0.0).sum(dim=1) / scored.sum(dim=1)
    per_image = per_image[scored.any(dim=1)]
    return float(per_image.mean()) if len(per_image) else float("nan")


def wire_keys(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as Flower records carry them: kebab-case (``macro_f1`` -> ``macro-f1``)."""
    return {key.replace("_", "-"): value for key, value in metrics.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
