import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from omnirad.data.synthetic import CLASS_NAMES, FINDING_NAMES, MODALITIES, generate


@pytest.fixture(scope="module")
def sample():
    return generate(320, size=64, seed=0)


def test_same_seed_same_data_and_prefix_property(sample):
    again = generate(320, size=64, seed=0)
    np.testing.assert_array_equal(sample.images, again.images)
    prefix = generate(40, size=64, seed=0)
    np.testing.assert_array_equal(prefix.images, sample.images[:40])
    np.testing.assert_array_equal(prefix.masks, sample.masks[:40])
    assert not np.array_equal(generate(40, size=64, seed=1).images, prefix.images)


@pytest.mark.parametrize("size", [28, 64, 224])
def test_shapes_and_dtypes(size):
    split = generate(8, size=size, seed=3)
    assert split.images.shape == split.masks.shape == (8, size, size)
    assert split.images.dtype == split.masks.dtype == np.uint8
    assert split.labels.dtype == split.modalities.dtype == split.findings.dtype == np.int64
    assert set(np.unique(split.masks)) <= {0, 1, 2}


def test_labels_modalities_and_findings_are_balanced_and_crossed(sample):
    for values, names in ((sample.labels, CLASS_NAMES), (sample.modalities, MODALITIES), (sample.findings, FINDING_NAMES)):
        assert np.bincount(values, minlength=len(names)).tolist() == [320 // len(names)] * len(names)
    combos = set(zip(sample.labels.tolist(), sample.modalities.tolist(), sample.findings.tolist(), strict=True))
    assert len(combos) == len(CLASS_NAMES) * len(MODALITIES) * len(FINDING_NAMES)


def test_masks_agree_with_findings(sample):
    has_lesion = (sample.masks == 2).any(axis=(1, 2))
    assert not has_lesion[sample.findings == 0].any()
    assert has_lesion[sample.findings != 0].all()
    assert (sample.masks == 1).any(axis=(1, 2)).all()


def test_sizes_render_the_same_anatomy():
    small, large = generate(4, size=56, seed=5), generate(4, size=224, seed=5)
    downsampled = large.images.reshape(4, 56, 4, 56, 4).mean(axis=(2, 4))
    correlation = np.corrcoef(downsampled.ravel(), small.images.astype(float).ravel())[0, 1]
    assert correlation > 0.8


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"num_samples": 0}, "num_samples"), ({"num_samples": 4, "size": 27}, "size"),
     ({"num_samples": 4, "size": 225}, "size"), ({"num_samples": 4, "seed": -1}, "seed"),
     ({"num_samples": 4, "size": 64.0}, "size")],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate(**kwargs)


def test_not_trivially_separable_but_learnable():
    train, test = generate(800, size=32, seed=0), generate(400, size=32, seed=1)

    def accuracy(features):
        clf = LogisticRegression(max_iter=2000).fit(features(train), train.labels)
        return (clf.predict(features(test)) == test.labels).mean()

    mean_intensity = accuracy(lambda s: s.images.reshape(len(s.images), -1).mean(axis=1, keepdims=True) / 255)
    layout = accuracy(lambda s: s.images.reshape(len(s.images), 8, 4, 8, 4).mean(axis=(2, 4)).reshape(len(s.images), -1) / 255)
    assert mean_intensity < 0.5  # chance is 0.25: the average brightness does not give the region away
    assert layout > 0.7  # the coarse anatomical layout does
