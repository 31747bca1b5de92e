"""The ``multitask`` keys: what a multi-task federation supports so far (``omnirad.multitask``
builds each task's configuration with ``load_config``, which runs this check: it lives apart)."""

from __future__ import annotations

from omnirad.adapters import ADAPTERS
from omnirad.config.io import comma_list
from omnirad.config.schema import Config
from omnirad.data.sources.embedded import EMBEDDED_TASKS
from omnirad.data.sources.files import DEPLOYMENT
from omnirad.errors import require
from omnirad.methods import site_method
from omnirad.tasks import CAPTIONING

SITS_OUT = "-"  # multitask.site-tasks: a site without a task this run
DECLARED = "declared"  # multitask.site-tasks in deployment: each site's file names its task


def check_multitask(cfg: Config) -> None:
    """What a multi-task federation supports so far; everything else is refused by name."""
    names = comma_list(cfg.multitask.site_tasks)
    key = "multitask.site-tasks"
    if cfg.data.dataset == DEPLOYMENT:
        require(names == [DECLARED], key, cfg.multitask.site_tasks,
                f"'{DECLARED}' in deployment: each site names its task in its site file (data.task-name)")
    else:
        require(cfg.data.dataset == "embedded", "data.dataset", cfg.data.dataset,
                f"embedded or deployment with {key} (the embedded data carries every task's labels)")
        require(len(names) == cfg.data.num_sites or not cfg.data.num_sites, key, cfg.multitask.site_tasks,
                f"{cfg.data.num_sites} task names, one per site (data.num-sites)")
        require(all(n in EMBEDDED_TASKS or n == SITS_OUT for n in names), key, cfg.multitask.site_tasks,
                f"names among {', '.join(EMBEDDED_TASKS)}, or '{SITS_OUT}' for a site that sits the run out")
        require(any(n != SITS_OUT for n in names), key, cfg.multitask.site_tasks, "at least one site with a task")
    paired = [name for name, spec in ADAPTERS.items() if spec.segmentation_twin]
    require(cfg.model.adapter in paired, "model.adapter", cfg.model.adapter,
            f"{', '.join(paired)} with {key} (classification sites train it; segmentation sites a decoder, "
            "under LoRA on the same encoder with lora)")
    captioned = [n for n in names if n in EMBEDDED_TASKS and EMBEDDED_TASKS[n].kind == CAPTIONING]
    with_captions = [name for name, spec in ADAPTERS.items() if spec.captioning_twin]
    require(not captioned or cfg.model.adapter in with_captions, "model.adapter", cfg.model.adapter,
            f"{' or '.join(with_captions)} with captioning sites in {key} (they train the caption decoder beside "
            "these heads; LoRA has no caption twin yet)")
    for setting, value, off in (("personalization.mode", cfg.personalization.mode, "none"),
                                ("privacy.dp", cfg.privacy.dp, False),
                                ("privacy.central-noise-multiplier", cfg.privacy.central_noise_multiplier, 0.0),
                                ("run.resume-from", cfg.run.resume_from, ""),
                                ("ssl.rounds", cfg.ssl.rounds, 0)):
        require(value == off, setting, value, f"{off!r}: not supported with {key} yet")
    require(site_method(cfg.strategy) is None, "strategy.name", cfg.strategy.name,
            f"a strategy without site-side model changes with {key} (not spectral)")
