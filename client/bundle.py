"""An exported model bundle: what a hospital needs to apply a finished run's model, and nothing of
its training (no checkpoints, no per-site metrics, no site state).

    <bundle>/
        config.yaml                          the run's resolved configuration
        best_adapter.safetensors             the adapter chosen (or final_adapter.safetensors)
        encoder.json                         the encoder's name and the SHA-256 of its weights: the
                                             weights are not in the bundle, each site holds its own copy
        feature-standardisation.safetensors  when the run's heads read standardised features
        card.json, card.md                   the metrics card

A bundle is a run folder cut to these files, so ``omnirad-predict --run BUNDLE`` reads it as it
reads a run folder, and checks the site's encoder weights against ``encoder.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.sites import task_info
from omnirad.run_files import ENCODER_FILE, STANDARDISATION_FILE, encoder_record


def export_bundle(run: Path, out: Path, adapter: str) -> Path:
    """Write the bundle of ``run``'s ``adapter`` (best or final) to ``out``, a folder that must not
    exist yet (nothing already written is overwritten); returns ``out``."""
    summary_file = run / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{run}: no summary.json; export a finished run")
    if not (run / f"{adapter}_adapter.safetensors").is_file():
        raise ConfigError(f"{run}: no {adapter}_adapter.safetensors")
    if out.exists():
        raise ConfigError(f"{out}: already exists; the bundle goes to a new folder")
    cfg = load_config(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))  # type: ignore[arg-type]
    encoder = (json.loads((run / ENCODER_FILE).read_text()) if (run / ENCODER_FILE).is_file()
               else encoder_record(cfg.model))
    card = metrics_card(run.name, json.loads(summary_file.read_text()), adapter, encoder,
                        {"task": cfg.data.task, "classes": list(task_info(cfg.data).label_names),
                         "adapter": cfg.model.adapter, "image-size": cfg.data.size})
    out.mkdir(parents=True)
    for name in ("config.yaml", f"{adapter}_adapter.safetensors", STANDARDISATION_FILE):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    (out / ENCODER_FILE).write_text(json.dumps(encoder, indent=2))
    (out / "card.json").write_text(json.dumps(card, indent=2))
    (out / "card.md").write_text(card_markdown(card))
    return out


def metrics_card(run_name: str, summary: dict[str, Any], adapter: str, encoder: dict[str, str],
                 model: dict[str, Any]) -> dict[str, Any]:
    """What the model is and how it scored: from the run's summary.json, the metrics of the
    adapter exported (the best round by federated validation, or the last)."""
    best = summary.get("best") or {}
    scored = best.get("global", {}) if adapter == "best" else summary.get("final", {})
    return {"run": run_name, "exported": f"{adapter}_adapter.safetensors", **model, "encoder": encoder,
            "round": best.get("round") if adapter == "best" else summary.get("rounds"),
            "selected-by": best.get("selected-by", "") if adapter == "best" else "the last round",
            "rounds": summary.get("rounds"), "sites": len(summary.get("sites-per-round", {}).get("1", [])) or None,
            "test-metrics": scored, "federated-validation": summary.get("final-federated-val", {}),
            "epsilon-per-site": summary.get("epsilon-per-site", {})}


def card_markdown(card: dict[str, Any]) -> str:
    """The card for people: what the model is, which round was exported, how it scored."""
    encoder = card["encoder"]
    lines = [f"# Model card: {card['run']}", "",
             f"- task: {card['task']} ({', '.join(card['classes'])}); adapter `{card['adapter']}` on the frozen "
             f"`{encoder['encoder']}` encoder (weights sha256 `{encoder['sha256']}`); images at {card['image-size']} px",
             f"- exported: `{card['exported']}`, round {card['round']} of {card['rounds']} ({card['selected-by']})"]
    if card["epsilon-per-site"]:
        lines.append(f"- differential privacy: epsilon per site {card['epsilon-per-site']}")
    lines += ["", "| metric (server test set) | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in card["test-metrics"].items() if isinstance(value, float)]
    return "\n".join(lines) + "\n"
