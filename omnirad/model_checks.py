"""The ``model`` keys: the encoder, adapter and head by name against their registries, and what
the closed-form head initialisation and standardised features need of the rest."""

from __future__ import annotations

from omnirad.adapters import ADAPTERS, HEADS, POOLED
from omnirad.adapters.finetune import LORA_TARGETS
from omnirad.closed_form import HEAD_INITS
from omnirad.config.io import comma_list
from omnirad.config.schema import Config
from omnirad.encoders import ENCODERS
from omnirad.errors import require
from omnirad.methods import site_method


def check_model(cfg: Config) -> None:
    m = cfg.model
    ENCODERS.check(m.encoder)
    spec = ADAPTERS[m.adapter]
    family = cfg.data.task if cfg.data.task in ("segmentation", "captioning") else "classification"
    if spec.family != family:
        wanted = [name for name, other in ADAPTERS.items() if other.family == family]
        require(False, "model.adapter", m.adapter, f"{' or '.join(wanted)} for data.task={cfg.data.task}"
                if family != "classification" else f"{', '.join(wanted)} for classification (segmentation and "
                "caption adapters need data.task=segmentation or captioning)")
    require(m.hidden_dim >= 1, "model.hidden-dim", m.hidden_dim, ">= 1")
    HEADS.check(m.head)
    require(m.lora_rank >= 1, "model.lora-rank", m.lora_rank, ">= 1")
    require(m.lora_alpha > 0, "model.lora-alpha", m.lora_alpha, "> 0")
    require(0 <= m.lora_dropout < 1, "model.lora-dropout", m.lora_dropout, "in [0, 1)")
    targets = comma_list(m.lora_targets)
    require(bool(targets) and set(targets) <= set(LORA_TARGETS), "model.lora-targets", m.lora_targets,
            "comma-separated names among " + ", ".join(LORA_TARGETS))
    require(m.decoder_width >= 8 and m.decoder_width % 4 == 0, "model.decoder-width", m.decoder_width,
            "a multiple of 4, >= 8")
    require(all(x.isdigit() and int(x) >= 1 for x in comma_list(m.decoder_layers)), "model.decoder-layers",
            m.decoder_layers, "comma-separated 1-based encoder block numbers, e.g. 4,8,12, or empty")
    require(m.caption_length >= 4, "model.caption-length", m.caption_length, ">= 4 tokens")
    require(m.caption_heads >= 1, "model.caption-heads", m.caption_heads, ">= 1")
    require(m.caption_width >= 8 and m.caption_width % m.caption_heads == 0, "model.caption-width", m.caption_width,
            f">= 8 and a multiple of model.caption-heads ({m.caption_heads})")
    require(m.caption_depth >= 1, "model.caption-depth", m.caption_depth, ">= 1")
    require(m.caption_beams >= 1, "model.caption-beams", m.caption_beams, ">= 1 (1: greedy decoding)")
    if family == "captioning":
        require(not cfg.privacy.dp, "privacy.dp", cfg.privacy.dp,
                "false with data.task=captioning (DP-SGD of the caption decoder is not supported yet)")
    if m.standardise_features:
        check_standardisation(cfg)
    check_head_init(cfg)


def check_head_init(cfg: Config) -> None:
    m, key = cfg.model, "model.head-init"
    spec = HEAD_INITS[m.head_init]
    require(m.ridge_lambda >= 0, "model.ridge-lambda", m.ridge_lambda, ">= 0")
    if spec is None:
        return
    require(m.adapter in spec.heads, "model.adapter", m.adapter, f"{' or '.join(spec.heads)} with {key}={m.head_init}")
    require(site_method(cfg.strategy) is None, "strategy.name", cfg.strategy.name,
            f"a strategy without site-side model changes with {key}={m.head_init} (spectral prompts change the "
            "features every step)")
    require(cfg.personalization.mode != "fedper", "personalization.mode", cfg.personalization.mode,
            f"not fedper with {key}={m.head_init}: the closed form is the output layer FedPer keeps at each site")


def check_standardisation(cfg: Config) -> None:
    key = "model.standardise-features"
    heads = [name for name, spec in ADAPTERS.items() if spec.reads == POOLED]
    require(cfg.model.adapter in heads, "model.adapter", cfg.model.adapter,
            f"{' or '.join(heads)} with {key}=true (the heads that read pooled features)")
    require(site_method(cfg.strategy) is None, "strategy.name", cfg.strategy.name,
            f"a strategy without site-side model changes with {key}=true (spectral prompts change the features "
            "every step)")
    require(not cfg.privacy.dp, "privacy.dp", cfg.privacy.dp,
            f"false with {key}=true: the feature moments a site sends are not differentially private")
    require(not cfg.multitask.site_tasks, "multitask.site-tasks", cfg.multitask.site_tasks,
            f"empty with {key}=true (not supported in a multi-task run yet)")
