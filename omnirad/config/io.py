"""Configuration as people and Flower write it: flat dotted kebab-case keys, YAML files,
``key=value`` overrides and TOML literals; and back again."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from omnirad.config.schema import Config
from omnirad.errors import ConfigError


def to_python(key: str) -> str:
    """``num-sites`` -> ``num_sites``: a wire key part as its schema attribute."""
    return key.replace("-", "_")


def to_wire(key: str) -> str:
    """``num_sites`` -> ``num-sites``: a schema attribute as its wire key part."""
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
        key = prefix + to_wire(f.name)
        if is_dataclass(value):
            flat.update(to_flat(value, key + "."))
        else:
            flat[key] = value
    return flat


def nest(flat: Mapping[str, Any], known: Mapping[str, Any]) -> dict[str, Any]:
    """Flat wire keys as the nested snake_case mapping omegaconf merges; an unknown key is named."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in known:
            raise ConfigError(f"unknown configuration key '{key}'; known keys: {', '.join(known)}")
        refuse_interpolation(key, value)
        node = nested
        *parents, leaf = [to_python(part) for part in key.split(".")]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def refuse_interpolation(key: str, value: Any) -> None:
    """Configuration values are data. omegaconf would resolve ``${...}`` in a value (an environment
    variable, another key) when the schema is built; a site re-reads the run configuration the
    server sends, so a crafted value could carry a site's environment back in an error. Refused,
    by key, wherever a value comes from and wherever in it (a list's items, a mapping's values: omegaconf
    resolves those too)."""
    if isinstance(value, str) and "${" in value:
        raise ConfigError(f"bad value for configuration key '{key}': {value!r} (configuration values are data: "
                          "interpolation with ${...} is refused)")
    if isinstance(value, Mapping):
        for name, item in value.items():
            refuse_interpolation(f"{key}.{name}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            refuse_interpolation(f"{key}[{index}]", item)


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
    return cast(dict[str, Any], content)  # OmegaConf types a mapping's keys as any scalar


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
            raise ConfigError(f"override {pair!r}: the value is not readable ({yaml_problem(err)}); quote it") from err
    return flat


def yaml_problem(err: yaml.YAMLError) -> str:
    """What YAML found wrong: a syntax error says where; a bad character has no ``problem`` field."""
    problem = getattr(err, "problem", None)
    return str(problem) if problem else str(err).splitlines()[0]


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def to_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML, in the flat kebab-case keys users type."""
    return OmegaConf.to_yaml(OmegaConf.create(to_flat(cfg)))
