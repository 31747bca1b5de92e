"""The embedded dataset: synthetic radiology-like images generated from a seed, with no download.

Each image is a cross-section of one of four body regions, the class label (``CLASS_NAMES``), as
in OrganAMNIST: ``head`` (skull, brain, ventricles), ``chest`` (lungs, heart, spine), ``abdomen``
(liver, spleen, kidneys, aorta, spine) and ``pelvis`` (bladder, femoral heads, sacrum, rectum).
Field of view, rotation, position and every structure's size and place vary per image.

Each image is drawn in one of four imaging styles (``MODALITIES``), which map tissue types to
intensities and add their own noise and artefacts: CT-like (air black, bone white, Gaussian
noise, occasional streaks), MR-like (fluid bright, bone dark, a smooth coil bias field, Rician
noise), X-ray-like (a projection: dark lungs, bright bone, rib bands, Poisson-like noise) and
ultrasound-like (a fan-shaped field of view, fluid anechoic, multiplicative speckle, attenuation
with depth).

Independently, each image has a finding (``FINDING_NAMES``) in one of its organs: ``normal``
(none), ``mass`` (one lobulated, textured lesion), ``nodules`` (3 to 7 small round lesions) or
``diffuse`` (an organ-wide reticular pattern, as in fibrosis). Findings are a second, harder label
set and give the segmentation masks: 0 background, 1 organ, 2 lesion (``MASK_CLASSES``).

Geometry is drawn in normalised coordinates, so sample ``i`` looks the same, up to resolution, at
any size from 28 to 224 px, and depends only on ``(seed, i)``: the first 100 samples of
``generate(1000)`` are ``generate(100)``. Region, style and finding cycle independently, so every
combination is equally frequent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("head", "chest", "abdomen", "pelvis")
MODALITIES: tuple[str, ...] = ("ct", "mr", "xray", "us")
FINDING_NAMES: tuple[str, ...] = ("normal", "mass", "nodules", "diffuse")
MASK_CLASSES: tuple[str, ...] = ("background", "organ", "lesion")
MIN_SIZE, MAX_SIZE = 28, 224


@dataclass(frozen=True)
class SyntheticSplit:
    images: np.ndarray  # (N, S, S) uint8
    labels: np.ndarray  # (N,) int64, index into CLASS_NAMES (body region)
    masks: np.ndarray  # (N, S, S) uint8, index into MASK_CLASSES
    modalities: np.ndarray  # (N,) int64, index into MODALITIES
    findings: np.ndarray  # (N,) int64, index into FINDING_NAMES


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    number = cast(int, value)  # compared below only when ``ok``
    if not ok or number < low or (high is not None and number > high):
        expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def generate(num_samples: int, size: int = 64, seed: int = 0) -> SyntheticSplit:
    """``num_samples`` images of ``size`` x ``size`` pixels; sample i depends only on (seed, i)."""
    _check_int("num_samples", num_samples, 1)
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    _check_int("seed", seed, 0)
    size = int(size)
    index = np.arange(num_samples, dtype=np.int64)
    labels = index % len(CLASS_NAMES)
    modalities = (index // len(CLASS_NAMES)) % len(MODALITIES)
    findings = (index // (len(CLASS_NAMES) * len(MODALITIES))) % len(FINDING_NAMES)
    images = np.empty((num_samples, size, size), np.uint8)
    masks = np.empty((num_samples, size, size), np.uint8)
    for i in range(num_samples):
        rng = np.random.default_rng([seed, i])
        images[i], masks[i] = _render(rng, size, label=int(labels[i]), modality=MODALITIES[modalities[i]],
                                      finding=int(findings[i]))
    return SyntheticSplit(images, labels, masks, modalities, findings)


class _Grid:
    """Pixel-centre coordinates in the anatomy's frame, and the width of a pixel in its units.

    The image spans [-1, 1]; the anatomy is scaled, rotated and shifted by inverting that
    transform on the pixel coordinates, so every shape is drawn once, in template coordinates.
    """

    def __init__(self, size: int, scale: float = 1.0, angle: float = 0.0, shift: tuple[float, float] = (0, 0)) -> None:
        axis = (np.arange(size) + 0.5) / size * 2 - 1
        y, x = np.meshgrid(axis, axis, indexing="ij")
        self.depth = y + 1  # distance from the top edge, for ultrasound in image coordinates
        dx, dy = x - shift[0], y - shift[1]
        c, s = np.cos(angle), np.sin(angle)
        self.x = (c * dx + s * dy) / scale
        self.y = (-s * dx + c * dy) / scale
        self.pixel = 2.0 / size / scale


def _ellipse(grid: _Grid, cx: float, cy: float, *, radii: tuple[float, float], angle: float) -> np.ndarray:
    """Normalised radius of every pixel in an ellipse centred at (cx, cy): < 1 inside."""
    rx, ry = radii
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = grid.x - cx, grid.y - cy
    u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
    return cast(np.ndarray, np.sqrt(u * u + v * v))


def _shape(grid: _Grid, shape: tuple[float, float, float, float, float]) -> np.ndarray:
    """``_ellipse`` of an anatomy tuple (cx, cy, rx, ry, angle)."""
    cx, cy, rx, ry, angle = shape
    return _ellipse(grid, cx, cy, radii=(rx, ry), angle=angle)


def _soft(radius: np.ndarray, scale: float, grid: _Grid) -> np.ndarray:
    """Anti-aliased inside-ness (0..1) from a normalised radius; ``scale`` is the shape's size."""
    width = grid.pixel / max(scale, 1e-6)
    return np.clip((1.0 - radius) / width + 0.5, 0.0, 1.0)


# Tissue types, drawn in order, each later structure covering the earlier ones.
BODY, ORGAN, LUNG, BONE, FLUID = "body", "organ", "lung", "bone", "fluid"

# (tissue, cx, cy, rx, ry, angle) per body region, in template coordinates.
_ANATOMY: dict[str, list[tuple[str, float, float, float, float, float]]] = {
    "head": [(BODY, 0, 0, 0.72, 0.84, 0), (BONE, 0, 0, 0.68, 0.8, 0), (ORGAN, 0, 0, 0.61, 0.73, 0),
             (FLUID, -0.1, -0.05, 0.06, 0.2, 0.35), (FLUID, 0.1, -0.05, 0.06, 0.2, -0.35)],
    "chest": [(BODY, 0, 0, 0.92, 0.66, 0), (LUNG, -0.43, -0.04, 0.3, 0.46, 0.1), (LUNG, 0.43, -0.04, 0.3, 0.46, -0.1),
              (ORGAN, 0.1, 0.1, 0.24, 0.21, 0.5), (BONE, 0, 0.5, 0.1, 0.1, 0), (BONE, 0, -0.56, 0.12, 0.05, 0)],
    "abdomen": [(BODY, 0, 0, 0.86, 0.7, 0), (ORGAN, -0.33, -0.12, 0.38, 0.3, 0.2), (ORGAN, 0.46, -0.15, 0.15, 0.21, -0.4),
                (ORGAN, -0.34, 0.3, 0.11, 0.17, 0.3), (ORGAN, 0.34, 0.3, 0.11, 0.17, -0.3),
                (FLUID, 0.06, 0.26, 0.05, 0.05, 0), (BONE, 0, 0.47, 0.12, 0.11, 0)],
    "pelvis": [(BODY, 0, 0, 0.93, 0.6, 0), (FLUID, 0, -0.12, 0.25, 0.19, 0), (BONE, -0.56, 0.05, 0.15, 0.15, 0),
               (BONE, 0.56, 0.05, 0.15, 0.15, 0), (BONE, 0, 0.42, 0.22, 0.1, 0), (ORGAN, 0, 0.22, 0.1, 0.08, 0)],
}


# An anatomy tuple (cx, cy, rx, ry, angle), as ``_shape`` takes it.
_Ellipse = tuple[float, float, float, float, float]


def _structures(rng: np.random.Generator, region: str) -> list[tuple[str, tuple[float, float, float, float, float]]]:
    """The region's template with every structure's place, size and tilt jittered."""
    out = []
    for tissue, cx, cy, rx, ry, angle in _ANATOMY[region]:
        jitter = 0.02 if tissue == BODY else 0.045
        grow = rng.uniform(0.88, 1.12, 2)
        out.append((tissue, (cx + rng.normal(0, jitter), cy + rng.normal(0, jitter), rx * grow[0], ry * grow[1],
                             angle + rng.normal(0, 0.12))))
    return out


def _point_in(rng: np.random.Generator, organ: _Ellipse, spread: float) -> tuple[float, float]:
    """A random point inside an organ ellipse, at most ``spread`` of the way to its edge."""
    cx, cy, rx, ry, angle = organ
    t, r = rng.uniform(0, 2 * np.pi), spread * np.sqrt(rng.uniform(0, 1))
    c, s = np.cos(angle), np.sin(angle)
    u, v = r * rx * np.cos(t), r * ry * np.sin(t)
    return cx + c * u - s * v, cy + s * u + c * v


def _mass(rng: np.random.Generator, grid: _Grid, organ: _Ellipse) -> tuple[np.ndarray, np.ndarray]:
    """One lobulated, textured mass, brighter or darker than its organ."""
    lx, ly = _point_in(rng, organ, 0.5)
    radius = rng.uniform(0.09, 0.2)
    dist = _ellipse(grid, lx, ly, radii=(radius, radius * rng.uniform(0.75, 1.0)), angle=rng.uniform(0, np.pi))
    theta = np.arctan2(grid.y - ly, grid.x - lx)
    lobes = 1 + sum(rng.uniform(0.06, 0.16) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (3, 5))
    shape = _soft(dist / lobes, radius, grid)
    texture = 1 + 0.3 * rng.standard_normal(grid.x.shape)
    return shape, rng.choice([-1.0, 1.0]) * shape * texture * rng.uniform(0.25, 0.5)


def _nodules(rng: np.random.Generator, grid: _Grid, organ: _Ellipse) -> tuple[np.ndarray, np.ndarray]:
    """3 to 7 small, smooth, round nodules of one polarity scattered through the organ."""
    shape = np.zeros_like(grid.x)
    for _ in range(rng.integers(3, 8)):
        lx, ly = _point_in(rng, organ, 0.85)
        radius = max(rng.uniform(0.035, 0.07), 0.8 * grid.pixel)
        shape = np.maximum(shape, _soft(_ellipse(grid, lx, ly, radii=(radius, radius), angle=0.0), radius, grid))
    return shape, rng.choice([-1.0, 1.0]) * shape * rng.uniform(0.3, 0.6)


def _diffuse(rng: np.random.Generator, grid: _Grid, organ: _Ellipse) -> tuple[np.ndarray, np.ndarray]:
    """Organ-wide disease: a coarse reticular pattern over the whole organ (as in fibrosis)."""
    frequency = rng.uniform(9, 16)
    phase = rng.uniform(0, 2 * np.pi, 2)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * grid.x + np.sin(angle) * grid.y
    v = -np.sin(angle) * grid.x + np.cos(angle) * grid.y
    pattern = np.abs(np.sin(frequency * u + phase[0]) * np.sin(frequency * v + phase[1]))
    shape = _soft(_shape(grid, organ), min(organ[2], organ[3]), grid)
    return shape, shape * (pattern - 0.35) * rng.uniform(0.35, 0.6)


_FINDINGS = {1: _mass, 2: _nodules, 3: _diffuse}


def _render(rng: np.random.Generator, size: int, *, label: int, modality: str, finding: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask."""
    grid = _Grid(size, rng.uniform(0.8, 1.05), rng.normal(0, 0.2), tuple(rng.normal(0, 0.05, 2)))
    values = _TISSUE[modality]
    image = np.full(grid.x.shape, values["air"])
    mask = np.zeros(grid.x.shape, np.uint8)
    hosts = []
    for tissue, shape in _structures(rng, CLASS_NAMES[label]):
        inside = _soft(_shape(grid, shape), min(shape[2], shape[3]), grid)
        value = values[tissue] + rng.normal(0, 0.04)
        image = image * (1 - inside) + value * inside
        if tissue in (ORGAN, LUNG, FLUID):
            mask[inside > 0.5] = 1
        if tissue in (ORGAN, LUNG):
            hosts.append((inside, shape))
    if finding != 0:
        inside, shape = hosts[int(rng.integers(len(hosts)))]
        lesion_shape, lesion_signal = _FINDINGS[finding](rng, grid, shape)
        lesion_shape = lesion_shape * inside
        image = image + lesion_signal * inside
        mask[lesion_shape > 0.5] = 2
    image = _NOISE[modality](rng, grid, image)
    gain, offset = rng.uniform(0.85, 1.15), rng.normal(0, 0.03)
    image = np.clip(image * gain + offset, 0, 1)
    return (image * 255 + 0.5).astype(np.uint8), mask


# Mean intensity of each tissue in each style (air = outside the body).
_TISSUE = {
    "ct": {"air": 0.0, BODY: 0.42, ORGAN: 0.56, LUNG: 0.08, BONE: 0.95, FLUID: 0.33},
    "mr": {"air": 0.02, BODY: 0.32, ORGAN: 0.48, LUNG: 0.05, BONE: 0.12, FLUID: 0.88},
    "xray": {"air": 0.04, BODY: 0.52, ORGAN: 0.6, LUNG: 0.22, BONE: 0.93, FLUID: 0.58},
    "us": {"air": 0.02, BODY: 0.38, ORGAN: 0.5, LUNG: 0.15, BONE: 0.85, FLUID: 0.03},
}


def _ct_noise(rng: np.random.Generator, grid: _Grid, image: np.ndarray) -> np.ndarray:
    if rng.random() < 0.3:  # streak artefact from a dense point
        px, py = rng.uniform(-0.4, 0.4, 2)
        theta = np.arctan2(grid.y - py, grid.x - px)
        image = image + (image > 0.2) * 0.05 * np.cos(rng.integers(6, 14) * theta) * rng.uniform(0.3, 1.0)
    return cast(np.ndarray, image + rng.normal(0, rng.uniform(0.01, 0.04), grid.x.shape))


def _mr_noise(rng: np.random.Generator, grid: _Grid, image: np.ndarray) -> np.ndarray:
    a, b, c = rng.normal(0, 0.25, 3)
    image = image * np.clip(1 + a * grid.x + b * grid.y + c * grid.x * grid.y, 0.4, 1.6)  # coil bias field
    sigma = rng.uniform(0.01, 0.04)
    return cast(np.ndarray,
                np.sqrt((image + rng.normal(0, sigma, grid.x.shape)) ** 2 + rng.normal(0, sigma, grid.x.shape) ** 2))


def _xray_noise(rng: np.random.Generator, grid: _Grid, image: np.ndarray) -> np.ndarray:
    ribs = 0.5 + 0.5 * np.cos(grid.y * rng.uniform(18, 24) + 3 * grid.x**2 + rng.uniform(0, 2 * np.pi))
    image = image + 0.06 * ribs * (image > 0.1)
    image = np.clip(image, 0, 1)
    return cast(np.ndarray, image + rng.normal(0, 1, grid.x.shape) * np.sqrt(image + 0.01) * rng.uniform(0.02, 0.05))


def _us_noise(rng: np.random.Generator, grid: _Grid, image: np.ndarray) -> np.ndarray:
    apex_x = rng.normal(0, 0.05)
    depth = grid.depth
    angle = np.arctan2(_image_x(grid) - apex_x, grid.depth + 0.05)
    fan = np.clip((rng.uniform(0.6, 0.75) - np.abs(angle)) / 0.03, 0, 1)
    speckle = 0.55 + 0.45 * rng.exponential(1.0, grid.x.shape)
    speckle = 0.5 * speckle + 0.5 * np.roll(speckle, 1, axis=0)  # axially elongated speckle
    return cast(np.ndarray, fan * image * speckle * np.exp(-rng.uniform(0.15, 0.35) * depth))


def _image_x(grid: _Grid) -> np.ndarray:
    """Horizontal image coordinate in [-1, 1] (the fan is fixed to the probe, not the anatomy)."""
    size = grid.depth.shape[1]
    return np.broadcast_to((np.arange(size) + 0.5) / size * 2 - 1, grid.depth.shape)


_NOISE = {"ct": _ct_noise, "mr": _mr_noise, "xray": _xray_noise, "us": _us_noise}
