"""Which adapter tensors a site keeps to itself: FedPer and FedBN on any OmniRad-FL adapter.

Hospitals differ in label mix and scanners, so one global adapter can fit none of them well.
FedPer (Arivazhagan et al., 2019) keeps each site's output layer local and federates the rest;
FedBN (Li et al., 2021) keeps the normalisation layers local. Flower's strategies have no notion
of local tensors, so the split is made here: a site sends only the shared tensors, the server
aggregates only those, and each site completes the model with its own local tensors (or, before
it has any, the common initial values every participant builds from ``run.seed``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from omnirad.config.schema import PersonalizationConfig
from omnirad.errors import ConfigError, require
from omnirad.registry import Registry

NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
OUTPUT_LAYERS = (nn.Linear, nn.Conv2d)


def _trainable(module: nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{name}" for name, p in module.named_parameters() if p.requires_grad}


def output_layer_keys(model: nn.Module) -> set[str]:
    """The trainable tensors of the model's output layer: its last Linear or Conv2d with any.

    Every OmniRad-FL model registers its output layer last (head after encoder, classifier after
    the decoder's upsampling), which ``tests/test_personalization.py`` checks for each adapter.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, OUTPUT_LAYERS) and _trainable(m, name)]
    name, layer = layers[-1]
    return _trainable(layer, name)


def norm_layer_keys(model: nn.Module) -> set[str]:
    """The trainable tensors of every normalisation layer (affine weights and biases)."""
    return set().union(*(_trainable(m, name) for name, m in model.named_modules() if isinstance(m, NORM_LAYERS)))


NO_PERSONALIZATION = "none"
# What each mode keeps local, from the model: a mode's name is also accepted as strategy.name
# (FedAvg with that mode), as FedPer and FedBN are known by.
PERSONALIZATION: Registry[Callable[[nn.Module], set[str]]] = Registry("personalization.mode")
PERSONALIZATION.add(NO_PERSONALIZATION, lambda model: set())
PERSONALIZATION.add("fedper", output_layer_keys)
PERSONALIZATION.add("fedbn", norm_layer_keys)


def local_keys(model: nn.Module, mode: str, adapter: str) -> frozenset[str]:
    """The trainable tensors a site keeps under ``personalization.mode``, and those the model itself
    declares personal (``personal_keys``: the spectral suffix prompts); the rest are federated.

    Raises ``ConfigError`` when the mode would leave nothing to federate or nothing to keep.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    declared = {name for name in trainable if name.split(".")[0] in getattr(model, "personal_keys", ())}
    if mode == NO_PERSONALIZATION:
        return frozenset(declared)
    keys = PERSONALIZATION[mode](model)
    if not keys:
        raise ConfigError(
            f"personalization.mode='{mode}' with model.adapter='{adapter}': the adapter has no trainable "
            "normalisation layer to keep local; use fedper, or an adapter with one (mlp, decoder, full)"
        )
    if keys | declared >= trainable:
        raise ConfigError(
            f"personalization.mode='{mode}' with model.adapter='{adapter}': every trainable tensor would stay "
            "local and nothing would be federated; use an adapter with more than an output layer (mlp, lora, "
            "full, decoder)"
        )
    return frozenset(keys | declared)


def check_personalization(personalization: PersonalizationConfig) -> None:
    """The ``personalization`` keys."""
    PERSONALIZATION.check(personalization.mode)
    require(personalization.finetune_epochs >= 0, "personalization.finetune-epochs",
            personalization.finetune_epochs, ">= 0")
