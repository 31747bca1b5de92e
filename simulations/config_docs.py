"""docs/configuration.md, generated from the schema: every key, its default, what it means, and
for keys that name an implementation, the names registered for it.

    python -m omnirad_fl.simulations.config_docs            # rewrite docs/configuration.md
    python -m omnirad_fl.simulations.config_docs --check    # exit 1 when the file is out of date

tests/test_config_docs.py fails when the file and the schema differ, so the table cannot go stale.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

from omnirad.adapters import ADAPTERS, HEADS
from omnirad.config import Config
from omnirad.config.io import to_wire
from omnirad.data.partition import PARTITIONS
from omnirad.data.sources import DATA_SOURCES
from omnirad.data.sources.embedded import EMBEDDED_TASKS, label_sets
from omnirad.data.volumes import WINDOWS
from omnirad.encoders import ENCODERS
from omnirad.faults import FAULTS
from omnirad.personalization import PERSONALIZATION
from omnirad.registry import Registry
from omnirad.ssl import SSL_OBJECTIVES
from omnirad_fl.strategies import STRATEGIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGISTRIES: tuple[Registry[Any], ...] = (ENCODERS, ADAPTERS, HEADS, PARTITIONS, PERSONALIZATION, FAULTS, SSL_OBJECTIVES,
                                         STRATEGIES, EMBEDDED_TASKS, WINDOWS)


def choices() -> dict[str, str]:
    """Per key, the names it accepts, from the registries."""
    found = {registry.key: ", ".join(f"`{name}`" for name in registry) for registry in REGISTRIES}
    found["data.dataset"] = ", ".join(f"`{name}`" if not source.describes else source.describes
                                      for name, source in DATA_SOURCES.items())
    found["data.label-set"] = ", ".join(f"`{name}`" for name in label_sets())
    return found


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def section_rows(section: Any, prefix: str, accepted: dict[str, str]) -> list[str]:
    rows = []
    for f in fields(section):
        if is_dataclass(f.type) or (f.default is MISSING and f.default_factory is not MISSING):
            continue
        key = prefix + to_wire(f.name)
        doc = f.metadata.get("doc", "")
        if key in accepted:
            doc += f". One of: {accepted[key]}"
        rows.append(f"| `{key}` | {literal(getattr(section, f.name))} | {doc} |")
    return rows


def render() -> str:
    accepted = choices()
    cfg = Config()
    lines = ["# Configuration keys", "",
             "Generated from the schema (`omnirad/config/schema.py`) and the registries by "
             "`python -m omnirad_fl.simulations.config_docs`; do not edit by hand.", "",
             "Keys are flat, dotted and kebab-case everywhere: `flwr run . --run-config \"data.alpha=0.1\"`, "
             "`omnirad-sim FILE.yaml data.alpha=0.1`, YAML files (flat or nested), and `[tool.flwr.app.config]` "
             "in pyproject.toml. A wrong key or value stops the run before any work, naming the key; no number "
             "key takes NaN or infinity.", "",
             "| key | default | meaning |", "|---|---|---|"]
    lines += section_rows(cfg, "", accepted)
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        if not is_dataclass(section):
            continue
        title = (type(section).__doc__ or "").strip().splitlines()[0].replace("``", "`")
        lines += ["", f"## `{to_wire(f.name)}.*`: {title}", "", "| key | default | meaning |", "|---|---|---|"]
        lines += section_rows(section, to_wire(f.name) + ".", accepted)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.config_docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python -m omnirad_fl.simulations.config_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
