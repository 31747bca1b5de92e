"""One configuration schema for every way of running OmniRad-FL.

The schema is a tree of omegaconf structured configs (dataclasses with defaults). On the wire and
on the command line keys are flat, dotted and kebab-case (``data.num-sites``), as Flower's
``run_config`` has them; in Python they are snake_case attributes (``cfg.data.num_sites``).
``load_config`` turns flat keys into a validated ``Config`` and names the offending key when
something is wrong, before any work starts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from omnirad.tasks import KINDS as TASK_KINDS
from omnirad.tasks import MULTI_CLASS, SEGMENTATION

ENCODER_NAMES = ("omnirad-small", "omnirad-base", "radiodino-s16", "vit-tiny")
SEGMENTATION_ADAPTERS = ("decoder", "lora-decoder")  # lora-decoder: LoRA on the encoder under the decoder
ADAPTER_NAMES = ("linear", "mlp", "lora", "full", *SEGMENTATION_ADAPTERS)
HEAD_NAMES = ("linear", "mlp")
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
DEPLOYMENT = "deployment"  # each site reads its own file, named in its site configuration (omnirad-client)
NATURAL_SPLITS = ("files", DEPLOYMENT)  # each site has its own data: nothing to partition
DATASET_SOURCES = ("embedded", *NATURAL_SPLITS)  # or a 2D MedMNIST flag, e.g. bloodmnist
MEDMNIST_SIZES = (28, 64, 128, 224)
PARTITION_NAMES = ("iid", "dirichlet", "pathological", "quantity", "modality")
STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg", "krum")
PERSONALIZED_STRATEGIES = ("fedper", "fedbn")
SPECTRAL = "spectral"  # OmniFM-style spectral prompts and alignment (omnirad.spectral)  # shorthand: strategy.name=fedper is FedAvg + personalization.mode=fedper
FAULT_KINDS = ("scale", "nan", "crash")
PERSONALIZATION_MODES = ("none", "fedper", "fedbn")
EMBEDDED_LABEL_SETS = ("region", "finding")
EMBEDDED_TASK_NAMES = ("region", "finding", "lesions")  # body region, finding, lesion segmentation (omnirad.multitask)
SITS_OUT = "-"  # multitask.site-tasks: a site without a task this run
DECLARED = "declared"  # multitask.site-tasks in deployment: each site's file names its task
SSL_OBJECTIVES = ("mae", "dino")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


@dataclass
class DataConfig:
    dataset: str = "embedded"
    root: str = "data"  # folder of MedMNIST .npz files
    download: bool = False  # fetch a missing MedMNIST file through the medmnist package (needs a network)
    site_files: str = ""  # files: comma-separated, one file per site (a natural split); deployment: set by the site
    test_file: str = ""  # files: the server's held-out test file; empty means no central test
    task: str = "multi-class"  # files: a MedMNIST kind or segmentation; embedded: multi-class or segmentation
    label_set: str = "region"  # embedded multi-class: region (body region) or finding (normal, mass, nodules, diffuse)
    num_classes: int = 0  # files: classes (labels for multi-label; pixel classes with background for segmentation)
    size: int = 64  # the image size the encoder sees; segmentation masks are scored at this size
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_site: int = 2  # pathological partition: classes each site holds
    quantity_exponent: float = 1.0  # quantity partition: site sizes ~ rank^-exponent
    num_sites: int = 4
    num_train: int = 2400  # embedded data: pooled training images shared out among the sites
    num_test: int = 800  # embedded data: the server's held-out test set
    val_fraction: float = 0.15  # each site keeps this share of its images for local validation
    min_site_samples: int = 20


@dataclass
class ModelConfig:
    encoder: str = "vit-tiny"
    weights: str = ""
    adapter: str = "mlp"
    hidden_dim: int = 256  # mlp heads only
    head: str = "linear"  # lora and full: the classification head on the adapted encoder
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: str = "qkv,proj,fc1,fc2"  # comma-separated linear layers of every ViT block
    decoder_width: int = 64  # decoder: channels after fusing the token layers
    decoder_layers: str = ""  # decoder: 1-based encoder blocks, e.g. "4,8,12"; empty: a third, two thirds, last
    feature_cache: bool = False  # keep encoded features on the site's disk across rounds and processes
    standardise_features: bool = False  # linear/mlp: heads read features standardised with statistics pooled over all sites
    cache_dir: str = "~/.cache/omnirad-fl/features"


@dataclass
class TrainConfig:
    local_epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 1e-4


@dataclass
class StrategyConfig:
    name: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_sites: int = 0  # sites that must be connected for a round to start; 0: all data.num-sites
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies; late sites are left out
    join_timeout: float = 300.0  # deployment: seconds to wait at start for all data.num-sites sites to connect
    proximal_mu: float = 0.01  # fedprox: weight of the proximal term in each site's loss
    eta: float = 0.01  # fedadam, fedyogi, fedadagrad: server learning rate
    beta_1: float = 0.9  # fedadam, fedyogi
    beta_2: float = 0.99  # fedadam, fedyogi
    tau: float = 1e-3  # fedadam, fedyogi, fedadagrad: adaptivity
    server_lr: float = 1.0  # fedavgm: server learning rate
    server_momentum: float = 0.9  # fedavgm
    trim_beta: float = 0.2  # fedtrimmedavg: share cut at each end
    num_malicious: int = 1  # krum: sites assumed hostile
    validate_updates: bool = True  # leave out replies with wrong keys/shapes/dtypes, NaN/Inf or huge updates
    max_update_norm: float = 0.0  # absolute bound on an update's L2 norm; 0: none
    max_norm_ratio: float = 10.0  # bound as a multiple of the round's median update norm; 0: none
    clip_updates: bool = False  # scale a finite update beyond the bounds to the median norm instead of leaving it out
    min_valid_updates: int = 1  # fewer valid replies: the round keeps the global model unchanged


@dataclass
class PersonalizationConfig:
    """What each site keeps to itself, and the local fine-tuning baseline."""

    mode: str = "none"  # fedper: the output layer stays local; fedbn: the normalisation layers do
    finetune_epochs: int = 0  # > 0: after the last round each site fine-tunes the global adapter locally and reports


@dataclass
class SpectralConfig:
    """strategy.name=spectral: OmniFM-style spectral prompting (see omnirad.spectral)."""

    frequency_size: int = 8  # side of the low-frequency block of the Fourier amplitude
    prototypes: int = 4  # k-means centroids a site sends, once
    top_k: int = 2  # bank entries retrieved per image, as prefix tokens
    suffix_tokens: int = 2  # personal tokens kept at the site


@dataclass
class PrivacyConfig:
    """Client-side DP-SGD (omnirad.privacy), accounted over the whole run per site."""

    dp: bool = False
    epsilon: float = 8.0  # each site's total budget for the run
    delta: float = 1e-5
    max_grad_norm: float = 1.0  # per-sample gradient clipping bound
    noise_multiplier: float = 0.0  # 0: the smallest that fits every planned round into privacy.epsilon
    central_noise_multiplier: float = 0.0  # > 0: Flower's server-side DP wrapper (fixed clipping) adds this noise
    central_clipping_norm: float = 1.0  # the L2 bound it clips each site's update to


@dataclass
class FaultsConfig:
    """Simulation only: make one site misbehave, to test validation and robust aggregation."""

    site: int = -1  # the misbehaving site; -1: none
    kind: str = "scale"  # scale: send global + scale x its update; nan: send NaN; crash: fail with an error
    scale: float = 100.0
    from_round: int = 1  # crash: the first round the site fails


@dataclass
class MultitaskConfig:
    """Different tasks at different sites on one encoder (omnirad.multitask)."""

    site_tasks: str = ""  # simulation: one task per site (region, finding, lesions; '-' sits out); deployment: declared
    shared: bool = True  # aggregate what every task's model has (LoRA on the encoder) across all sites
    task: str = ""  # set by the framework: the task this participant trains


@dataclass
class SslConfig:
    """Federated self-supervised pretraining of the encoder before the adapter rounds (issue 7)."""

    rounds: int = 0  # 0: off; > 0: pretrain the encoder for this many rounds first
    local_epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 64
    objective: str = "mae"  # mae (masked image modelling) or dino (self-distillation)
    half_precision: bool = False  # send tensors as float16 both ways
    save_encoder: str = ""  # where the pretrained ViT goes (.safetensors); empty: the run output folder


@dataclass
class RunConfig:
    seed: int = 0
    output_dir: str = "runs"
    name: str = ""
    resume_from: str = ""  # a stopped run's folder: the server goes on after its last checkpointed round


@dataclass
class Config:
    num_server_rounds: int = 20
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
    ssl: SslConfig = field(default_factory=SslConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _to_python(key: str) -> str:
    return key.replace("-", "_")


def _to_wire(key: str) -> str:
    return key.replace("_", "-")


def flat_defaults() -> dict[str, Any]:
    """Every key of the schema, flat and kebab-case, with its default value."""
    return to_flat(Config())


def to_flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config (dataclass or DictConfig) into dotted kebab-case keys."""
    if not is_dataclass(cfg):
        cfg = OmegaConf.to_object(cfg)
    flat: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + _to_wire(f.name)
        if is_dataclass(value):
            flat.update(to_flat(value, key + "."))
        else:
            flat[key] = value
    return flat


def load_config(flat: Mapping[str, Any] | None = None) -> Config:
    """Build a validated ``Config`` from flat dotted keys (Flower's ``run_config``).

    Raises ``ConfigError`` naming the first unknown key, ill-typed value or value out of range.
    A ClientApp loads the same run configuration for every message (omegaconf takes about 30 ms
    each time), so each distinct one is built once per process and handed out as a copy.
    """
    items = tuple(sorted((k, type(v).__name__, v) for k, v in (flat or {}).items()))  # 1, 1.0, True differ
    try:
        return copy.deepcopy(_load_config(items))
    except TypeError:  # an unhashable value: no caching, same checks
        return _build_config(flat or {})


@lru_cache(maxsize=32)
def _load_config(items: tuple[tuple[str, str, Any], ...]) -> Config:
    return _build_config({key: value for key, _, value in items})


def _build_config(flat: Mapping[str, Any]) -> Config:
    known = flat_defaults()
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in known:
            raise ConfigError(f"unknown configuration key '{key}'; known keys: {', '.join(known)}")
        node = nested
        *parents, leaf = [_to_python(part) for part in key.split(".")]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), nested)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = _to_wire(str(getattr(err, "full_key", "") or "?"))
        raise ConfigError(f"bad value for configuration key '{key}': {err.msg}") from err
    resolve_personalized_strategy(cfg)
    validate(cfg)
    return cfg


def read_config_file(path: Path) -> dict[str, Any]:
    """Flat keys from a YAML file with flat (``data.alpha: 0.1``) or nested (``data: {alpha: 0.1}``) keys."""
    return flatten_keys(read_config_tree(path))


def read_config_tree(path: Path) -> dict[str, Any]:
    """A YAML configuration file as it is written (a mapping), with the file named in any error."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    try:
        content = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable YAML file: {err}") from err
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration keys, found {type(content).__name__}")
    return content


def flatten_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{data: {alpha: 0.1}}`` -> ``{"data.alpha": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def toml_literal(value: Any) -> str:
    """A value as Flower's ``--run-config`` and TOML files write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments, values read as YAML scalars (``0.1``, ``true``, ``fedprox``)."""
    flat: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected key=value, e.g. data.alpha=0.1")
        try:
            flat[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {pair!r}: the value is not readable ({err.problem}); quote it") from err
    return flat


def resolve_personalized_strategy(cfg: Config) -> None:
    """``strategy.name=fedper`` (or ``fedbn``) means FedAvg with ``personalization.mode=fedper``;
    ``personalization.mode`` alone also combines with any other strategy (FedProx, FedAdam, ...)."""
    name, mode = cfg.strategy.name, cfg.personalization.mode
    if name not in PERSONALIZED_STRATEGIES:
        return
    if mode not in ("none", name):
        raise ConfigError(f"strategy.name='{name}' contradicts personalization.mode='{mode}': set one of them")
    cfg.strategy.name, cfg.personalization.mode = "fedavg", name


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for configuration key '{key}': {value!r} (expected {expected})")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, "one of " + ", ".join(choices))


def validate(cfg: Config) -> None:
    """Range and choice checks that the types alone do not express."""
    _require(cfg.num_server_rounds >= (0 if cfg.ssl.rounds > 0 else 1), "num-server-rounds", cfg.num_server_rounds,
             ">= 1 (0 only to pretrain alone, with ssl.rounds > 0)")
    _validate_ssl(cfg.ssl)
    d = cfg.data
    flags = medmnist_flags()
    is_medmnist = all(part in flags for part in d.dataset.split("+"))
    _require(d.dataset in DATASET_SOURCES or is_medmnist, "data.dataset", d.dataset,
             "embedded, files, or 2D MedMNIST flags joined by '+': " + ", ".join(flags))
    _require(28 <= d.size <= 224, "data.size", d.size, "an image size from 28 to 224 pixels")
    if is_medmnist:
        _require(d.size in MEDMNIST_SIZES, "data.size", d.size, f"a MedMNIST size: {MEDMNIST_SIZES}")
        _require("+" not in d.dataset or "chestmnist" not in d.dataset, "data.dataset", d.dataset,
                 "single-label datasets only in a mix (chestmnist is multi-label)")
    if is_medmnist:
        _require(d.task == MULTI_CLASS, "data.task", d.task,
                 "the default: a MedMNIST dataset's task comes with it (segmentation needs MedSegBench files)")
    if d.dataset == "embedded":
        _one_of("data.task", d.task, (MULTI_CLASS, SEGMENTATION))
        _one_of("data.label-set", d.label_set, EMBEDDED_LABEL_SETS)
    if d.dataset == "files":
        files = site_file_list(cfg)
        _require(len(files) >= 1, "data.site-files", d.site_files, "comma-separated files, one per site")
        _require(len(files) == d.num_sites, "data.num-sites", d.num_sites, f"{len(files)}, one site per file in data.site-files")
    if d.dataset in NATURAL_SPLITS and not cfg.multitask.site_tasks:  # multi-task: each task has its own
        _one_of("data.task", d.task, TASK_KINDS)
        _require(d.num_classes >= 2 or (d.task.startswith("multi-label") and d.num_classes >= 1),
                 "data.num-classes", d.num_classes, "the number of classes (labels) in the site files")
    _one_of("data.partition", d.partition, PARTITION_NAMES)
    _require(d.alpha > 0, "data.alpha", d.alpha, "> 0")
    _require(d.classes_per_site >= 1, "data.classes-per-site", d.classes_per_site, ">= 1")
    _require(d.quantity_exponent >= 0, "data.quantity-exponent", d.quantity_exponent, ">= 0")
    _require(d.num_sites >= 1, "data.num-sites", d.num_sites, ">= 1")
    _require(d.num_train >= d.num_sites, "data.num-train", d.num_train, ">= data.num-sites")
    _require(d.num_test >= 1, "data.num-test", d.num_test, ">= 1")
    _require(0 < d.val_fraction < 1, "data.val-fraction", d.val_fraction, "between 0 and 1")
    _require(d.min_site_samples >= 2, "data.min-site-samples", d.min_site_samples, ">= 2")
    m = cfg.model
    _one_of("model.encoder", m.encoder, ENCODER_NAMES)
    _one_of("model.adapter", m.adapter, ADAPTER_NAMES)
    segmentation = d.task == SEGMENTATION
    _require((m.adapter in SEGMENTATION_ADAPTERS) == segmentation, "model.adapter", m.adapter,
             "decoder or lora-decoder for data.task=segmentation" if segmentation
             else "linear, mlp, lora or full for classification (decoder is for data.task=segmentation)")
    _require(m.hidden_dim >= 1, "model.hidden-dim", m.hidden_dim, ">= 1")
    _one_of("model.head", m.head, HEAD_NAMES)
    _require(m.lora_rank >= 1, "model.lora-rank", m.lora_rank, ">= 1")
    _require(m.lora_alpha > 0, "model.lora-alpha", m.lora_alpha, "> 0")
    _require(0 <= m.lora_dropout < 1, "model.lora-dropout", m.lora_dropout, "in [0, 1)")
    targets = comma_list(m.lora_targets)
    _require(bool(targets) and set(targets) <= set(LORA_TARGETS), "model.lora-targets", m.lora_targets,
             "comma-separated names among " + ", ".join(LORA_TARGETS))
    _require(m.decoder_width >= 8 and m.decoder_width % 4 == 0, "model.decoder-width", m.decoder_width, "a multiple of 4, >= 8")
    layers = comma_list(m.decoder_layers)
    _require(all(x.isdigit() and int(x) >= 1 for x in layers), "model.decoder-layers", m.decoder_layers,
             "comma-separated 1-based encoder block numbers, e.g. 4,8,12, or empty")
    if m.standardise_features:
        _validate_standardisation(cfg)
    t = cfg.train
    _require(t.local_epochs >= 1, "train.local-epochs", t.local_epochs, ">= 1")
    _require(t.lr > 0, "train.lr", t.lr, "> 0")
    _require(t.batch_size >= 1, "train.batch-size", t.batch_size, ">= 1")
    _require(t.weight_decay >= 0, "train.weight-decay", t.weight_decay, ">= 0")
    s = cfg.strategy
    _one_of("strategy.name", s.name, STRATEGY_NAMES + PERSONALIZED_STRATEGIES + (SPECTRAL,))
    _require(0 < s.fraction_train <= 1, "strategy.fraction-train", s.fraction_train, "in (0, 1]")
    _require(
        0 <= s.fraction_evaluate <= 1, "strategy.fraction-evaluate", s.fraction_evaluate, "in [0, 1]"
    )
    for key in ("proximal_mu", "max_update_norm", "max_norm_ratio"):
        _require(getattr(s, key) >= 0, f"strategy.{_to_wire(key)}", getattr(s, key), ">= 0")
    for key in ("eta", "tau", "server_lr"):
        _require(getattr(s, key) > 0, f"strategy.{_to_wire(key)}", getattr(s, key), "> 0")
    for key in ("beta_1", "beta_2", "server_momentum"):
        _require(0 <= getattr(s, key) < 1, f"strategy.{_to_wire(key)}", getattr(s, key), "in [0, 1)")
    _require(0 <= s.trim_beta < 0.5, "strategy.trim-beta", s.trim_beta, "in [0, 0.5)")
    _require(0 <= s.min_sites <= d.num_sites, "strategy.min-sites", s.min_sites, f"from 0 (all) to data.num-sites ({d.num_sites})")
    _require(s.round_timeout > 0, "strategy.round-timeout", s.round_timeout, "> 0 seconds")
    _require(s.join_timeout >= 0, "strategy.join-timeout", s.join_timeout, ">= 0 seconds")
    _require(s.num_malicious >= 0, "strategy.num-malicious", s.num_malicious, ">= 0")
    _require(s.min_valid_updates >= 1, "strategy.min-valid-updates", s.min_valid_updates, ">= 1")
    sp = cfg.spectral
    if s.name == SPECTRAL:  # the spectral keys matter only then (a one-site test federation has no bank)
        _require(cfg.model.adapter in HEAD_NAMES, "model.adapter", cfg.model.adapter,
                 "linear or mlp with strategy.name=spectral (the head on the spectrally prompted encoder)")
        _require(2 <= sp.frequency_size <= d.size, "spectral.frequency-size", sp.frequency_size, f"from 2 to data.size ({d.size})")
        _require(sp.prototypes >= 1, "spectral.prototypes", sp.prototypes, ">= 1")
        _require(1 <= sp.top_k <= d.num_sites, "spectral.top-k", sp.top_k,
                 f"from 1 to data.num-sites ({d.num_sites}): the bank holds at least one entry per site")
        _require(sp.suffix_tokens >= 0, "spectral.suffix-tokens", sp.suffix_tokens, ">= 0")
    pr = cfg.privacy
    _require(pr.epsilon > 0, "privacy.epsilon", pr.epsilon, "> 0")
    _require(0 < pr.delta < 1, "privacy.delta", pr.delta, "in (0, 1)")
    _require(pr.max_grad_norm > 0, "privacy.max-grad-norm", pr.max_grad_norm, "> 0")
    _require(pr.noise_multiplier >= 0, "privacy.noise-multiplier", pr.noise_multiplier, ">= 0 (0: derived from privacy.epsilon)")
    _require(pr.central_noise_multiplier >= 0, "privacy.central-noise-multiplier", pr.central_noise_multiplier, ">= 0 (0: off)")
    _require(pr.central_clipping_norm > 0, "privacy.central-clipping-norm", pr.central_clipping_norm, "> 0")
    if pr.dp:
        _require(s.name not in ("fedprox", SPECTRAL), "strategy.name", s.name,
                 "a strategy without a proximal term when privacy.dp=true (its gradient is not clipped or noised)")
    pz = cfg.personalization
    _one_of("personalization.mode", pz.mode, PERSONALIZATION_MODES)
    _require(pz.finetune_epochs >= 0, "personalization.finetune-epochs", pz.finetune_epochs, ">= 0")
    f = cfg.faults
    _require(-1 <= f.site < d.num_sites, "faults.site", f.site, f"-1 (none) or a site from 0 to {d.num_sites - 1}")
    _one_of("faults.kind", f.kind, FAULT_KINDS)
    _require(f.from_round >= 1, "faults.from-round", f.from_round, ">= 1")
    if cfg.multitask.site_tasks:
        validate_multitask(cfg)


def validate_multitask(cfg: Config) -> None:
    """What a multi-task federation supports so far; everything else is refused by name."""
    names = comma_list(cfg.multitask.site_tasks)
    key = "multitask.site-tasks"
    if cfg.data.dataset == DEPLOYMENT:
        _require(names == [DECLARED], key, cfg.multitask.site_tasks,
                 f"'{DECLARED}' in deployment: each site names its task in its site file (data.task-name)")
    else:
        _require(cfg.data.dataset == "embedded", "data.dataset", cfg.data.dataset,
                 f"embedded or deployment with {key} (the embedded data carries every task's labels)")
        _validate_site_tasks(cfg, names, key)
    _require(cfg.model.adapter in ("linear", "mlp", "lora"), "model.adapter", cfg.model.adapter,
             f"linear, mlp or lora with {key} (classification sites train it; segmentation sites a decoder, "
             "under LoRA on the same encoder with lora)")
    for setting, value, off in (("personalization.mode", cfg.personalization.mode, "none"),
                                ("privacy.dp", cfg.privacy.dp, False),
                                ("privacy.central-noise-multiplier", cfg.privacy.central_noise_multiplier, 0.0),
                                ("run.resume-from", cfg.run.resume_from, ""),
                                ("ssl.rounds", cfg.ssl.rounds, 0)):
        _require(value == off, setting, value, f"{off!r}: not supported with {key} yet")
    _require(cfg.strategy.name != SPECTRAL, "strategy.name", cfg.strategy.name, f"not spectral with {key}")


def _validate_site_tasks(cfg: Config, names: list[str], key: str) -> None:
    _require(len(names) == cfg.data.num_sites, key, cfg.multitask.site_tasks,
             f"{cfg.data.num_sites} task names, one per site (data.num-sites)")
    _require(all(n in EMBEDDED_TASK_NAMES or n == SITS_OUT for n in names), key, cfg.multitask.site_tasks,
             f"names among {', '.join(EMBEDDED_TASK_NAMES)}, or '{SITS_OUT}' for a site that sits the run out")
    _require(any(n != SITS_OUT for n in names), key, cfg.multitask.site_tasks, "at least one site with a task")


def _validate_standardisation(cfg: Config) -> None:
    key = "model.standardise-features"
    _require(cfg.model.adapter in HEAD_NAMES, "model.adapter", cfg.model.adapter,
             f"linear or mlp with {key}=true (the heads that read pooled features)")
    _require(cfg.strategy.name != SPECTRAL, "strategy.name", cfg.strategy.name,
             f"not spectral with {key}=true (spectral prompts change the features every step)")
    _require(not cfg.privacy.dp, "privacy.dp", cfg.privacy.dp,
             f"false with {key}=true: the feature moments a site sends are not differentially private")
    _require(not cfg.multitask.site_tasks, "multitask.site-tasks", cfg.multitask.site_tasks,
             f"empty with {key}=true (not supported in a multi-task run yet)")


def _validate_ssl(s: SslConfig) -> None:
    _require(s.rounds >= 0, "ssl.rounds", s.rounds, ">= 0 (0: no pretraining)")
    _require(s.local_epochs >= 1, "ssl.local-epochs", s.local_epochs, ">= 1")
    _require(s.lr > 0, "ssl.lr", s.lr, "> 0")
    _require(s.batch_size >= 2, "ssl.batch-size", s.batch_size, ">= 2")
    _one_of("ssl.objective", s.objective, SSL_OBJECTIVES)
    _require(not s.save_encoder or s.save_encoder.endswith(".safetensors"), "ssl.save-encoder", s.save_encoder,
             "empty or a path ending in .safetensors")


def medmnist_flags() -> tuple[str, ...]:
    """The 2D MedMNIST datasets the medmnist package describes."""
    from medmnist import INFO  # imported here: the package is slow to import and often not needed

    return tuple(flag for flag in INFO if not flag.endswith("3d"))


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def site_file_list(cfg: Config) -> list[str]:
    return comma_list(cfg.data.site_files)


def to_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML, in the flat kebab-case keys users type."""
    return OmegaConf.to_yaml(OmegaConf.create(to_flat(cfg)))
