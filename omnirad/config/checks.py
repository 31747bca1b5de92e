"""Checks of a configuration that its types alone do not express: one function per section.

Values that pick an implementation (an encoder, an adapter, a data source, a partition scheme, an
SSL objective, ...) are checked against that extension point's registry; a registered source or
client-side method checks its own keys. Registries are imported when checking, not when this
module is imported, because the modules that fill them import the configuration schema.
The strategy's name is the server's to check (``omnirad_fl.strategies``): only the server knows
its strategies.
"""

from __future__ import annotations

from omnirad.config.io import comma_list
from omnirad.config.schema import Config
from omnirad.errors import require


def validate(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the first key whose value is wrong."""
    alone = cfg.ssl.rounds > 0 or cfg.model.head_init != "random"
    require(cfg.num_server_rounds >= (0 if alone else 1), "num-server-rounds", cfg.num_server_rounds,
            ">= 1 (0 only to pretrain alone, with ssl.rounds > 0, or for a closed-form head alone, model.head-init)")
    check_ssl(cfg)
    check_data(cfg)
    check_model(cfg)
    check_train(cfg)
    check_strategy(cfg)
    check_privacy(cfg)
    check_personalization(cfg)
    check_faults(cfg)
    check_run(cfg)
    if cfg.multitask.site_tasks:
        from omnirad.multitask import check_multitask

        check_multitask(cfg)


def check_ssl(cfg: Config) -> None:
    from omnirad.ssl import SSL_OBJECTIVES

    s = cfg.ssl
    require(s.rounds >= 0, "ssl.rounds", s.rounds, ">= 0 (0: no pretraining)")
    require(s.local_epochs >= 1, "ssl.local-epochs", s.local_epochs, ">= 1")
    require(s.lr > 0, "ssl.lr", s.lr, "> 0")
    require(s.batch_size >= 2, "ssl.batch-size", s.batch_size, ">= 2")
    SSL_OBJECTIVES.check(s.objective)
    require(not s.save_encoder or s.save_encoder.endswith(".safetensors"), "ssl.save-encoder", s.save_encoder,
            "empty or a path ending in .safetensors")


def check_data(cfg: Config) -> None:
    from omnirad.data.partition import PARTITIONS
    from omnirad.data.sources import source_of
    from omnirad.data.volumes import WINDOWS
    from omnirad.metrics import VOLUME_SCORES

    d = cfg.data
    source = source_of(d.dataset)
    require(28 <= d.size <= 224, "data.size", d.size, "an image size from 28 to 224 pixels")
    source.check(cfg)
    PARTITIONS.check(d.partition)
    require(d.alpha > 0, "data.alpha", d.alpha, "> 0")
    require(d.classes_per_site >= 1, "data.classes-per-site", d.classes_per_site, ">= 1")
    require(d.quantity_exponent >= 0, "data.quantity-exponent", d.quantity_exponent, ">= 0")
    require(d.num_sites >= 0, "data.num-sites", d.num_sites, ">= 1, or 0 for the federation's size")
    require(d.num_train >= d.num_sites, "data.num-train", d.num_train, ">= data.num-sites")
    require(d.num_test >= 1, "data.num-test", d.num_test, ">= 1")
    require(0 < d.val_fraction < 1, "data.val-fraction", d.val_fraction, "between 0 and 1")
    require(d.min_site_samples >= 2, "data.min-site-samples", d.min_site_samples, ">= 2")
    WINDOWS.check(d.window)
    require(d.slice_axis in (0, 1, 2), "data.slice-axis", d.slice_axis, "0, 1 or 2")
    require(valid_spacing(d.spacing), "data.spacing", d.spacing, "empty, or three voxel sizes in mm: x,y,z (0: as stored)")
    require(d.volume_score in VOLUME_SCORES, "data.volume-score", d.volume_score, " or ".join(VOLUME_SCORES))


def check_model(cfg: Config) -> None:
    from omnirad.adapters import ADAPTERS, HEADS
    from omnirad.adapters.finetune import LORA_TARGETS
    from omnirad.encoders import ENCODERS

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
    from omnirad.closed_form import HEAD_INITS
    from omnirad.methods import site_method

    m, key = cfg.model, "model.head-init"
    spec = HEAD_INITS[m.head_init]
    require(m.ridge_lambda >= 0, "model.ridge-lambda", m.ridge_lambda, ">= 0")
    if spec is None:
        return
    require(m.adapter in spec.heads, "model.adapter", m.adapter, f"{' or '.join(spec.heads)} with {key}={m.head_init}")
    require(site_method(cfg) is None, "strategy.name", cfg.strategy.name,
            f"a strategy without site-side model changes with {key}={m.head_init} (spectral prompts change the "
            "features every step)")
    require(cfg.personalization.mode != "fedper", "personalization.mode", cfg.personalization.mode,
            f"not fedper with {key}={m.head_init}: the closed form is the output layer FedPer keeps at each site")


def check_standardisation(cfg: Config) -> None:
    from omnirad.adapters import ADAPTERS, POOLED
    from omnirad.methods import site_method

    key = "model.standardise-features"
    heads = [name for name, spec in ADAPTERS.items() if spec.reads == POOLED]
    require(cfg.model.adapter in heads, "model.adapter", cfg.model.adapter,
            f"{' or '.join(heads)} with {key}=true (the heads that read pooled features)")
    require(site_method(cfg) is None, "strategy.name", cfg.strategy.name,
            f"a strategy without site-side model changes with {key}=true (spectral prompts change the features "
            "every step)")
    require(not cfg.privacy.dp, "privacy.dp", cfg.privacy.dp,
            f"false with {key}=true: the feature moments a site sends are not differentially private")
    require(not cfg.multitask.site_tasks, "multitask.site-tasks", cfg.multitask.site_tasks,
            f"empty with {key}=true (not supported in a multi-task run yet)")


def check_train(cfg: Config) -> None:
    t = cfg.train
    require(t.local_epochs >= 1, "train.local-epochs", t.local_epochs, ">= 1")
    require(t.lr > 0, "train.lr", t.lr, "> 0")
    require(t.batch_size >= 1, "train.batch-size", t.batch_size, ">= 1")
    require(t.weight_decay >= 0, "train.weight-decay", t.weight_decay, ">= 0")


def check_strategy(cfg: Config) -> None:
    """The strategy's numbers; its name is checked by the server, its site-side pieces here."""
    from omnirad.methods import site_method

    s, num_sites = cfg.strategy, cfg.data.num_sites
    require(0 < s.fraction_train <= 1, "strategy.fraction-train", s.fraction_train, "in (0, 1]")
    require(0 <= s.fraction_evaluate <= 1, "strategy.fraction-evaluate", s.fraction_evaluate, "in [0, 1]")
    for key, value in (("proximal-mu", s.proximal_mu), ("max-update-norm", s.max_update_norm),
                       ("max-norm-ratio", s.max_norm_ratio)):
        require(value >= 0, f"strategy.{key}", value, ">= 0")
    for key, value in (("eta", s.eta), ("tau", s.tau), ("server-lr", s.server_lr)):
        require(value > 0, f"strategy.{key}", value, "> 0")
    for key, value in (("beta-1", s.beta_1), ("beta-2", s.beta_2), ("server-momentum", s.server_momentum)):
        require(0 <= value < 1, f"strategy.{key}", value, "in [0, 1)")
    require(0 <= s.trim_beta < 0.5, "strategy.trim-beta", s.trim_beta, "in [0, 0.5)")
    require(0 <= s.min_sites and (not num_sites or s.min_sites <= num_sites), "strategy.min-sites", s.min_sites,
            f"from 0 (all) to data.num-sites ({num_sites or 'the federation size'})")
    require(s.round_timeout > 0, "strategy.round-timeout", s.round_timeout, "> 0 seconds")
    require(s.join_timeout >= 0, "strategy.join-timeout", s.join_timeout, ">= 0 seconds")
    require(s.num_malicious >= 0, "strategy.num-malicious", s.num_malicious, ">= 0")
    require(s.min_valid_updates >= 1, "strategy.min-valid-updates", s.min_valid_updates, ">= 1")
    method = site_method(cfg)
    if method is not None:
        method.check(cfg)


def check_privacy(cfg: Config) -> None:
    p = cfg.privacy
    require(p.epsilon > 0, "privacy.epsilon", p.epsilon, "> 0")
    require(0 < p.delta < 1, "privacy.delta", p.delta, "in (0, 1)")
    require(p.max_grad_norm > 0, "privacy.max-grad-norm", p.max_grad_norm, "> 0")
    require(p.noise_multiplier >= 0, "privacy.noise-multiplier", p.noise_multiplier, ">= 0 (0: derived from privacy.epsilon)")
    require(p.central_noise_multiplier >= 0, "privacy.central-noise-multiplier", p.central_noise_multiplier, ">= 0 (0: off)")
    require(p.central_clipping_norm > 0, "privacy.central-clipping-norm", p.central_clipping_norm, "> 0")
    require(0 < p.statistics_share < 1, "privacy.statistics-share", p.statistics_share, "in (0, 1)")
    require(p.max_feature_norm > 0, "privacy.max-feature-norm", p.max_feature_norm, "> 0")


def check_personalization(cfg: Config) -> None:
    from omnirad.personalization import PERSONALIZATION

    PERSONALIZATION.check(cfg.personalization.mode)
    require(cfg.personalization.finetune_epochs >= 0, "personalization.finetune-epochs",
            cfg.personalization.finetune_epochs, ">= 0")


def check_run(cfg: Config) -> None:
    from omnirad.devices import check_device_syntax

    check_device_syntax(cfg.run.device, cfg.run.precision)


def check_faults(cfg: Config) -> None:
    from omnirad.faults import FAULTS

    f, num_sites = cfg.faults, cfg.data.num_sites
    require(-1 <= f.site and (not num_sites or f.site < num_sites), "faults.site", f.site,
            f"-1 (none) or a site from 0 to {num_sites - 1 if num_sites else 'the federation size - 1'}")
    FAULTS.check(f.kind)
    require(f.from_round >= 1, "faults.from-round", f.from_round, ">= 1")


def valid_spacing(text: str) -> bool:
    parts = comma_list(text)
    try:
        return not parts or (len(parts) == 3 and all(float(mm) >= 0 for mm in parts))
    except ValueError:
        return False
