"""The configuration schema: one tree of omegaconf structured configs (dataclasses with defaults).

Every field carries its documentation (``doc``), from which docs/configuration.md is generated
(``python -m omnirad_fl.simulations.config_docs``); where a value is a registered name (an encoder, an adapter, a
strategy, ...) the table lists the names from the registry. On the wire and the command line keys
are flat, dotted and kebab-case (``data.num-sites``); in Python they are snake_case attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def setting(default: Any, doc: str) -> Any:
    """A schema field with its default and the sentence that documents it."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class DataConfig:
    """Where each site's images come from and how a simulated pool is split among sites."""

    dataset: str = setting("embedded", "the data source: `embedded` (synthetic, generated on every machine), a 2D "
                           "MedMNIST flag (`bloodmnist`, `chestmnist`, ...) or several joined by `+`, a 3D MedMNIST flag "
                           "(`organmnist3d`, `nodulemnist3d`, ...; or several joined by `+`) read from `data.root`, "
                           "cut into slices along `data.slice-axis` and split among sites by volume, `files` (one "
                           "file per site: a natural split), or `deployment` (each site names its own file)")
    root: str = setting("data", "folder holding MedMNIST `.npz` files")
    download: bool = setting(False, "fetch a missing MedMNIST file through the medmnist package (needs a network)")
    site_files: str = setting("", "`files`: comma-separated site files (.npz, labels CSV or class folders), one "
                                  "per site; `deployment`: set by each site from its site file")
    test_file: str = setting("", "`files`: the server's held-out test file; empty means federated validation only")
    task: str = setting("multi-class", "`files`: `multi-class`, `binary-class`, `ordinal-regression`, `multi-label, "
                                       "binary-class`, `segmentation` or `captioning` (caption CSVs); `embedded`: "
                                       "`multi-class`, `segmentation` (organ and lesion masks) or `captioning` "
                                       "(templated captions)")
    label_set: str = setting("region", "`embedded` classification: which labels the images carry")
    vocabulary: str = setting("", "`files`/`deployment` captioning: the vocabulary file every site shares (one word "
                                  "per line; `python -m omnirad.captions CSV... -o FILE` writes one); empty: a "
                                  "federated word count of the sites' training captions before round 1")
    vocabulary_min_count: int = setting(2, "federated vocabulary: a site sends only words it has seen at least this "
                                           "often in its training captions (rarer words never leave it)")
    vocabulary_max_words: int = setting(0, "federated vocabulary: keep the most frequent words only; 0: every word "
                                           "the sites send")
    num_classes: int = setting(0, "`files`: number of classes (labels, for multi-label; pixel classes with "
                                  "background, for segmentation); required there")
    size: int = setting(64, "image size in pixels the encoder sees (28 to 224; for MedMNIST 28, 64, 128 or 224, "
                            "for MedMNIST 3D 28 or 64: picks the file); segmentation masks are scored at this size")
    partition: str = setting("dirichlet", "how a pool is split among simulated sites")
    alpha: float = setting(0.5, "`dirichlet`: concentration; smaller is more skewed")
    classes_per_site: int = setting(2, "`pathological`: classes each site holds")
    quantity_exponent: float = setting(1.0, "`quantity`: site sizes proportional to rank^-exponent")
    num_sites: int = setting(0, "number of sites; 0: the federation's size (in simulation Flower's `num-supernodes`, "
                                "which each node learns as `num-partitions`; `make demo`, `omnirad-sim` and sweeps "
                                "start 4); a number given must match the federation; deployment needs one")
    num_train: int = setting(2400, "`embedded`: pooled training images shared out among the sites")
    num_test: int = setting(800, "`embedded`: the server's held-out test images")
    val_fraction: float = setting(0.15, "share of each site's images kept for local validation")
    min_site_samples: int = setting(20, "smallest allowed site (in volumes, for a pool of volumes: MedMNIST 3D); a "
                                        "split that cannot meet it fails with a message")
    window: str = setting("percentile", "volumes (NIfTI, DICOM): intensities to 0-255 by a CT window in Hounsfield "
                                        "units, or by each volume's 1st-99th percentiles (`percentile`: MR and "
                                        "uncalibrated images)")
    slice_axis: int = setting(2, "volumes (NIfTI, DICOM, MedMNIST 3D): the spatial axis cut into 2D slices; for "
                                 "NIfTI and DICOM after RAS orientation: 0 sagittal, 1 coronal, 2 axial")
    spacing: str = setting("", "volumes (NIfTI, DICOM): resample to this voxel spacing in mm, `x,y,z` (e.g. "
                               "`0.8,0.8,2.5`), so sites' scanners agree on scale; 0 for an axis keeps it as stored "
                               "(required on the slice axis with per-slice labels); empty: as stored")
    volume_score: str = setting("mean", "volumes: a volume's class scores from its slices' probabilities, `mean` "
                                        "or `max`, reported as `volume-*` metrics beside the per-slice ones")


@dataclass
class ModelConfig:
    """The frozen encoder and what each site trains on it."""

    encoder: str = setting("vit-tiny", "the frozen encoder (a timm ViT)")
    weights: str = setting("", "a local weights file, `hub`, `hf_hub:<id>`, or empty for a random init (with a "
                               "loud warning)")
    adapter: str = setting("linear", "what each site trains: a head on pooled features, LoRA or full fine-tuning "
                                  "on images, a segmentation decoder, or a caption decoder (`caption-decoder`, for `data.task=captioning`)")
    hidden_dim: int = setting(256, "hidden width of `mlp` heads")
    head_init: str = setting("auto", "how the head starts: its own random initialisation (`random`), or a closed-form "
                                     "solution from statistics every site sends once before round 1 (exactly the "
                                     "pooled solution, whatever the split; `ridge` for `linear`/`mlp`, `ncm` "
                                     "(class means) for `cosine`); with `num-server-rounds=0` the closed form is "
                                     "the result, otherwise the usual rounds fine-tune it. `auto`: `ridge` for the "
                                     "`linear` head without DP, personalization, spectral prompts, SSL, multi-task "
                                     "groups or feature standardisation; `random` otherwise")
    ridge_lambda: float = setting(0.01, "`ridge`: the L2 penalty lambda of the closed-form ridge regression")
    head: str = setting("linear", "`lora` and `full`: the head on the adapted encoder (always trainable)")
    lora_rank: int = setting(16, "LoRA rank r")
    lora_alpha: float = setting(32.0, "LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = setting(0.1, "dropout on the LoRA branch")
    lora_targets: str = setting("qkv,proj,fc1,fc2", "comma-separated linear layers of every ViT block that get LoRA: "
                                                    "attention in/out, MLP in/out")
    decoder_width: int = setting(64, "`decoder`: channels after fusing the token layers (a multiple of 4)")
    decoder_layers: str = setting("", "`decoder`: 1-based encoder blocks to read, e.g. `4,8,12`; empty: a third, "
                                      "two thirds and the last")
    caption_length: int = setting(32, "`caption-decoder`: longest caption in tokens, start and end included; "
                                      "longer captions in site files are cut, and decoding stops there")
    caption_width: int = setting(128, "`caption-decoder`: width of the text decoder (a multiple of "
                                      "`model.caption-heads`)")
    caption_depth: int = setting(2, "`caption-decoder`: transformer decoder layers")
    caption_heads: int = setting(4, "`caption-decoder`: attention heads")
    caption_beams: int = setting(1, "`caption-decoder`: beams of the beam search that writes captions; 1: greedy")
    feature_cache: bool = setting(False, "keep each site's encoded features (heads) or token maps (decoder) on its "
                                         "disk, so later rounds and new processes skip the encoder; ignored, with a "
                                         "warning, for adapters that read images")
    standardise_features: bool = setting(False, "`linear`/`mlp`: heads read features standardised with a mean and "
                                                "std pooled exactly over every site's training features (sent once "
                                                "as count, sum and sum of squares); refused with DP, spectral prompts "
                                                "and multi-task runs")
    cache_dir: str = setting("~/.cache/omnirad-fl/features", "where the feature cache lives (keyed by encoder "
                                                             "weights, preprocessing, what is stored and image bytes)")


@dataclass
class TrainConfig:
    """Each site's local training in a round (AdamW)."""

    local_epochs: int = setting(5, "local epochs per round")
    lr: float = setting(3e-3, "AdamW learning rate")
    batch_size: int = setting(32, "local batch size")
    weight_decay: float = setting(1e-4, "AdamW weight decay")


@dataclass
class StrategyConfig:
    """How the server samples sites, screens their replies and aggregates them."""

    name: str = setting("fedavg", "the aggregation strategy; `fedper` and `fedbn` are short for `fedavg` with that "
                                  "`personalization.mode`")
    fraction_train: float = setting(1.0, "share of sites sampled for training each round")
    fraction_evaluate: float = setting(1.0, "share of sites sampled for federated evaluation")
    min_sites: int = setting(0, "sites that must be connected before a round starts (0: all `data.num-sites`); "
                                "lower it so a federation goes on while a site is down")
    round_timeout: float = setting(3600.0, "seconds the server waits for a round's replies; late sites are left "
                                           "out of the round (`failures`)")
    join_timeout: float = setting(300.0, "deployment: seconds to wait at start for all `data.num-sites` sites to "
                                         "connect; then the run starts with those there (at least `strategy.min-sites`)")
    proximal_mu: float = setting(0.01, "`fedprox`, `spectral`: weight mu of the proximal term mu/2 ||w - w_global||^2 "
                                       "in each site's loss")
    eta: float = setting(0.01, "`fedadam`, `fedyogi`, `fedadagrad`: server learning rate")
    beta_1: float = setting(0.9, "`fedadam`, `fedyogi`: first-moment decay")
    beta_2: float = setting(0.99, "`fedadam`, `fedyogi`: second-moment decay")
    tau: float = setting(1e-3, "`fedadam`, `fedyogi`, `fedadagrad`: adaptivity")
    server_lr: float = setting(1.0, "`fedavgm`: server learning rate")
    server_momentum: float = setting(0.9, "`fedavgm`: server momentum")
    trim_beta: float = setting(0.2, "`fedtrimmedavg`: share of values cut at each end")
    num_malicious: int = setting(1, "`krum`: sites assumed hostile")
    validate_updates: bool = setting(True, "leave out replies with unexpected keys, shapes or dtypes, NaN or Inf, "
                                           "or an update norm beyond the bounds (reason kept in `metrics.jsonl`)")
    max_update_norm: float = setting(0.0, "absolute bound on an update's L2 norm; 0: none")
    max_norm_ratio: float = setting(10.0, "bound as a multiple of the round's median update norm; 0: none")
    clip_updates: bool = setting(False, "scale a finite update beyond the bounds down to the round's median norm "
                                        "(kept, with its direction) instead of leaving it out")
    min_valid_updates: int = setting(1, "with fewer valid replies the round keeps the global model unchanged")


@dataclass
class PersonalizationConfig:
    """What each site keeps to itself, and the local fine-tuning baseline."""

    mode: str = setting("none", "which adapter tensors stay at each site; only the rest is sent and aggregated")
    finetune_epochs: int = setting(0, "> 0: after the last round each site fine-tunes the global adapter for this "
                                      "many epochs and reports `finetuned-*` validation metrics")


@dataclass
class SpectralConfig:
    """``strategy.name=spectral``: OmniFM-style spectral prompting (see omnirad.spectral)."""

    frequency_size: int = setting(8, "side of the low-frequency block of each image's Fourier amplitude")
    prototypes: int = setting(4, "k-means centroids of the spectral embeddings a site sends, once (each "
                                 "summarises at least 10 images)")
    top_k: int = setting(2, "bank entries retrieved per image and fed to the encoder as prefix tokens")
    suffix_tokens: int = setting(2, "trainable tokens appended to every sequence, kept at the site")


@dataclass
class PrivacyConfig:
    """Client-side DP-SGD (opacus), accounted over the whole run per site; server-side DP (Flower)."""

    dp: bool = setting(False, "client-side DP-SGD on the trainable tensors, one privacy account per site for the run")
    epsilon: float = setting(8.0, "each site's total budget for the run; a round that would exceed it is refused")
    delta: float = setting(1e-5, "the delta of each site's (epsilon, delta) guarantee")
    max_grad_norm: float = setting(1.0, "per-sample gradient clipping bound")
    noise_multiplier: float = setting(0.0, "0: the smallest noise with which every planned round fits the budget")
    central_noise_multiplier: float = setting(0.0, "> 0: Flower's server-side DP wrapper (fixed clipping) adds this "
                                                   "noise to the aggregate")
    central_clipping_norm: float = setting(1.0, "the L2 bound the server-side DP wrapper clips each update to")
    max_feature_norm: float = setting(10.0, "with `model.head-init`: each example's head inputs are scaled down to "
                                            "this L2 norm before the statistics are summed and noised (the per-example "
                                            "bound of the Gaussian mechanism, as `privacy.max-grad-norm` is for DP-SGD)")
    statistics_share: float = setting(0.5, "with `model.head-init` and fine-tuning rounds: the share of "
                                           "`privacy.epsilon` the closed-form statistics may spend (all of it without "
                                           "rounds); DP-SGD gets the rest")
    secure_sum: bool = setting(False, "the sums the server needs before round 1 (closed-form head statistics and "
                                      "their temperature losses, feature standardisation moments, a federated "
                                      "vocabulary's word counts) reach it only "
                                      "as their total over sites: pairwise masking, exact to float64 "
                                      "(docs/secure-aggregation.md); adapter rounds stay in the clear")
    distributed_noise: bool = setting(False, "with `privacy.dp`, `privacy.secure-sum` and a closed-form head: each of "
                                             "the n sites in the statistics' secure sum adds 1/sqrt(n) of the noise, "
                                             "so the sum carries the noise one site's statistics carry without it and "
                                             "the head is sqrt(n) times less noisy; each site's epsilon is accounted as "
                                             "without it (against the server, which sees only the sum), but a server "
                                             "colluding with every other site sees the site's share only "
                                             "(docs/privacy.md)")


@dataclass
class FaultsConfig:
    """Simulation only: make one site misbehave, to test validation and robust aggregation."""

    site: int = setting(-1, "the misbehaving site; -1: none; refused in a deployed federation (server and sites)")
    kind: str = setting("scale", "`scale`: it sends global + scale x its update; `nan`: NaN; `crash`: its ClientApp "
                                 "fails with an error")
    scale: float = setting(100.0, "`scale`: the factor on the site's update")
    from_round: int = setting(1, "`crash`: the first round the site fails")


@dataclass
class MultitaskConfig:
    """Different tasks at different sites on one encoder (omnirad.multitask)."""

    site_tasks: str = setting("", "one task per site, comma-separated (`-`: the site sits out), with "
                                  "`data.dataset=embedded`; `declared` in deployment (each site's file names its "
                                  "task); empty: every site trains `data.task`")
    shared: bool = setting(True, "average the tensors every task's model has (LoRA on the encoder) across all "
                                 "sites; false: within each task")


@dataclass
class SslConfig:
    """Federated self-supervised pretraining of the encoder before the adapter rounds."""

    rounds: int = setting(0, "> 0: first pretrain the encoder for this many federated rounds on the sites' "
                             "unlabelled images (docs/ssl.md); with `num-server-rounds=0` pretrain alone")
    local_epochs: int = setting(1, "each site's pretraining epochs per round")
    lr: float = setting(1e-4, "peak AdamW learning rate (warm-up and cosine run over all `ssl.rounds`)")
    batch_size: int = setting(64, "pretraining batch size")
    objective: str = setting("mae", "the self-supervised objective")
    half_precision: bool = setting(False, "send the pretraining tensors as float16 both ways (half the bytes)")
    save_encoder: str = setting("", "where the pretrained ViT goes (a timm `.safetensors` file for `model.weights`); "
                                    "empty: the run output folder")


@dataclass
class RunConfig:
    """Seeds and where results go."""

    seed: int = setting(0, "seed of the split, the initial adapter and local shuffling (0 to 4294967295)")
    device: str = setting("auto", "where this participant computes: `auto` (CUDA if present, else Apple `mps`, else "
                                  "the CPU), `cpu`, `cuda`, `cuda:N` or `mps`; in deployment each site's own site file "
                                  "decides its device, never the server")
    precision: str = setting("auto", "`auto` (bf16 on a GPU that has it, fp16 on other CUDA GPUs, fp32 elsewhere), "
                                     "`fp32`, `bf16` (mixed precision, also on the CPU) or `fp16` (CUDA, with a "
                                     "gradient scaler); features and adapters are stored and sent in float32 "
                                     "whatever it is")
    output_dir: str = setting("runs", "where run folders go")
    name: str = setting("", "run folder name suffix (default: dataset-encoder-adapter-strategy): at most 100 letters, "
                            "digits and `. _ - + = ,`, no `..`")
    resume_from: str = setting("", "a stopped run's folder: the server goes on after its last checkpointed round, "
                                   "with the same configuration (`num-server-rounds` may grow)")
    verbose: bool = setting(False, "`make demo`, `omnirad-sim` and sweeps print Flower's and Ray's full log on the "
                                   "terminal too (`OMNIRAD_VERBOSE=1` does the same); by default it goes only to the "
                                   "run folder's `flower.log`, and the terminal shows the project's messages, the "
                                   "round table and warnings")
    tracking: str = setting("none", "experiment tracking besides `metrics.jsonl`, to local files only: `none`, "
                                    "`tensorboard` (event files in the run folder's `tensorboard/`) or `mlflow` "
                                    "(MLflow's SQLite store `<run.output-dir>/mlflow.db`); optional extras: "
                                    "`pip install 'omnirad-fl[tensorboard]'` or `[mlflow]` (docs/ecosystem.md)")
    tracking_experiment: str = setting("", "`run.tracking=mlflow`: the MLflow experiment (default: the name of "
                                           "`run.output-dir`'s folder, so a sweep's cells are one experiment)")
    cross_site: str = setting("auto", "cross-site evaluation after the last round: every site's final model (its "
                                      "own layers under `personalization.mode`, its locally fine-tuned copy with "
                                      "`personalization.finetune-epochs`) and the global one scored on every "
                                      "site's validation split; `auto` (on for personalised simulated runs, never in "
                                      "deployment), `on` or `off`. "
                                      "A site's own layers leave it for this (docs/ecosystem.md)")


@dataclass
class Config:
    """A whole run."""

    num_server_rounds: int = setting(20, "rounds of federated training")
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
