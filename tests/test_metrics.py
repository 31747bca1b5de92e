import numpy as np
import pytest
import torch

from omnirad.metrics import classification_metrics
from omnirad.tasks import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL, TaskSpec

FOUR = TaskSpec(MULTI_CLASS, ("a", "b", "c", "d"))


def test_perfect_and_hand_computed_multiclass():
    labels = np.array([0, 1, 2, 3])
    perfect = classification_metrics(labels, torch.eye(4) * 5, FOUR)
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["auc"] == 1.0
    # predicts class 0 for everything: accuracy 1/4, F1 of class 0 = 2*(1/4*1)/(1/4+1) = 0.4, others 0
    constant = classification_metrics(labels, torch.tensor([[1.0, 0, 0, 0]] * 4), FOUR)
    assert constant["accuracy"] == 0.25 and constant["macro_f1"] == pytest.approx(0.1)
    assert constant["auc"] == pytest.approx(0.5)


def test_auc_over_present_classes_when_a_site_lacks_some():
    labels = np.array([0, 0, 1, 1])  # classes 2 and 3 absent
    logits = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 2.0, 0, 0]])
    metrics = classification_metrics(labels, logits, FOUR)
    assert metrics["auc"] == 1.0 and metrics["auc_classes"] == 2.0


def test_binary_and_ordinal_use_softmax_columns():
    task = TaskSpec(BINARY, ("no", "yes"))
    metrics = classification_metrics(np.array([[0], [1], [1]]), torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0]]), task)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["auc"] == pytest.approx(0.75)
    ordinal = TaskSpec(ORDINAL, ("0", "1", "2"))
    assert classification_metrics(np.array([0, 1, 2]), torch.eye(3), ordinal)["accuracy"] == 1.0


def test_multilabel_uses_sigmoid_per_label():
    task = TaskSpec(MULTI_LABEL, ("x", "y"))
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    logits = torch.tensor([[3.0, -3], [-3, 3], [3, -3], [-3, -3]])  # label y of sample 2 missed
    metrics = classification_metrics(labels, logits, task)
    assert metrics["accuracy"] == pytest.approx((1.0 + 0.75) / 2)  # per-label accuracy, averaged
    loss = task.loss(logits, task.targets(labels))
    assert loss.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels).float()).item())


def test_unknown_task_kind():
    with pytest.raises(ValueError, match="unknown task kind"):
        TaskSpec("regression", ("a",))


def test_non_finite_predictions_give_nan_metrics_not_an_error():
    import math

    from omnirad.metrics import task_metrics
    from omnirad.tasks import MULTI_CLASS, TaskSpec

    logits = torch.full((4, 3), float("nan"))
    metrics = task_metrics(np.array([0, 1, 2, 0]), logits, TaskSpec(MULTI_CLASS, ("a", "b", "c")))
    assert set(metrics) == {"accuracy", "macro_f1", "auc"} and all(math.isnan(v) for v in metrics.values())


def test_calibration_error_equals_torchmetrics_and_names_overconfidence():
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 2, (500, 4)))
    labels = rng.integers(0, 4, 500)
    ours = classification_metrics(labels, logits, TaskSpec(MULTI_CLASS, ("a", "b", "c", "d")))["ece"]
    theirs = multiclass_calibration_error(torch.softmax(logits, 1), torch.from_numpy(labels), num_classes=4, n_bins=15)
    assert ours == pytest.approx(float(theirs), abs=1e-6) and ours > 0.3  # random labels, confident logits

    probs = rng.uniform(0, 1, (500, 3))
    multi = (rng.uniform(0, 1, (500, 3)) < probs).astype(int)  # each label true with its stated probability
    ours = classification_metrics(multi, torch.logit(torch.from_numpy(probs)), TaskSpec(MULTI_LABEL, ("x", "y", "z")))["ece"]
    theirs = np.mean([float(binary_calibration_error(torch.from_numpy(probs[:, c]), torch.from_numpy(multi[:, c]), n_bins=15))
                      for c in range(3)])
    assert ours == pytest.approx(theirs, abs=1e-6) and ours < 0.1  # calibrated by construction
