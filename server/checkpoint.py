"""Checkpoint after every round, and resume a run that stopped (``run.resume-from``).

After each round the run folder gets the global adapter (``checkpoint-round-N.safetensors``), what
the strategy has accumulated (``strategy-state-round-N.safetensors``: FedAdam/FedYogi/FedAdagrad
moments, FedAvgM's momentum) and, written last as the commit mark, ``checkpoint.json``: format
version, round number, how the strategy's tensors fit together and the SHA-256 of each file. No
pickle: a run folder is data, and loading it runs no code. Every file is written to a temporary
name and renamed, and the tensor files are named by round, so a server killed mid-write leaves the
previous checkpoint whole; files the mark no longer names are removed after it is written. A
resumed server continues with the next round, numbered as in the uninterrupted run, so sites draw
the same random numbers and the run ends with the same metrics.

A resumed run must be the stopped run, configured alike: ``check_same_run`` compares the resumed
configuration with the run folder's ``config.yaml`` and names every key that differs, with both
values, before the server waits for sites. Only ``MAY_CHANGE_ON_RESUME`` may differ: the number
of rounds (to extend a run), where the run resumes from, where new run folders go, the log level
and how long the server waits for sites. Every other key decides the model, the data, the training
or what the run folder records, so a resumed run that changed it would not be the run it claims
to continue.

A checkpoint is data someone may have changed: the SHA-256 in the mark catches a damaged file, not
one rewritten together with its mark. So what is loaded is also checked against the model the run
folder's ``config.yaml`` describes (every tensor the server sends, by name, shape and dtype, none
more, all finite), the strategy's tensors against those, and no file the mark names may be a
symbolic link (one could lead out of the run folder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from omnirad.adapters import trainable_state
from omnirad.config import FEDERATION_SIZE, Config, ConfigError, read_config_file, to_flat
from omnirad.configure import load_config
from omnirad.durable import sha256_of, write_atomically
from omnirad.models import kept_at_sites, new_model
from omnirad.multitask import is_multitask
from omnirad.tensor_checks import state_problems
from omnirad_fl.strategies import flower_strategy

# What Flower 1.42's strategies accumulate across rounds (FedOpt family: dicts of arrays; FedAvgM:
# an ArrayRecord and a list of arrays); the rest of a strategy is its configuration, rebuilt from
# the run's config.
STRATEGY_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector")
MARK, VERSION = "checkpoint.json", 2
CONFIG = "config.yaml"  # the run folder's resolved configuration (server/run_folder.py writes it)
LEGACY_STATE = "strategy-state.pkl"  # version 1 kept the strategy state as a pickle
StateValue = dict[str, np.ndarray] | list[np.ndarray] | ArrayRecord
# What a resumed run may configure differently (the module's docstring says why these alone).
MAY_CHANGE_ON_RESUME = frozenset({"num-server-rounds", "run.resume-from", "run.output-dir", "run.verbose",
                                  "strategy.join-timeout", "strategy.round-timeout"})


@dataclass
class Checkpoint:
    server_round: int
    arrays: dict[str, torch.Tensor]
    strategy_state: dict[str, StateValue]


def _flatten(name: str, value: StateValue) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One strategy attribute as its layout (for the mark) and its arrays (for safetensors)."""
    if isinstance(value, ArrayRecord):
        keys, arrays = list(value.keys()), value.to_numpy_ndarrays()
        layout: dict[str, Any] = {"kind": "array-record", "keys": keys}
    elif isinstance(value, dict):
        keys, arrays = list(value), list(value.values())
        layout = {"kind": "mapping", "keys": keys}
    elif isinstance(value, list):
        keys, arrays = [str(i) for i in range(len(value))], value
        layout = {"kind": "sequence", "length": len(value)}
    else:
        raise TypeError(f"strategy state {name!r} is a {type(value).__name__}; the checkpoint stores "
                        "dicts or lists of arrays and ArrayRecords")
    return layout, {f"{name}/{key}": np.ascontiguousarray(array) for key, array in zip(keys, arrays, strict=True)}


def _unflatten(name: str, layout: dict[str, Any], tensors: dict[str, np.ndarray]) -> StateValue:
    kind = layout["kind"]
    if kind == "sequence":
        return [tensors[f"{name}/{i}"] for i in range(int(layout["length"]))]
    arrays = {str(key): tensors[f"{name}/{key}"] for key in layout["keys"]}
    if kind == "mapping":
        return arrays
    if kind == "array-record":
        return ArrayRecord({key: Array(array) for key, array in arrays.items()})
    raise KeyError(kind)


def save_checkpoint(folder: Path, server_round: int, arrays: dict[str, torch.Tensor], strategy: Strategy) -> None:
    """The state after ``server_round``: global adapter, strategy state (of the Flower strategy under
    any wrappers), then the commit mark; then files of earlier checkpoints go."""
    inner = flower_strategy(strategy)
    layouts, tensors = {}, {}
    for name in STRATEGY_STATE:
        if (value := getattr(inner, name, None)) is not None:
            layouts[name], flat = _flatten(name, value)
            tensors.update(flat)
    adapter, state = f"checkpoint-round-{server_round}.safetensors", f"strategy-state-round-{server_round}.safetensors"
    write_atomically(folder / adapter, lambda p: save_file({k: v.contiguous() for k, v in arrays.items()}, p))
    write_atomically(folder / state, lambda p: save_numpy(tensors, p))
    mark = {"version": VERSION, "round": server_round,
            "arrays": {"file": adapter, "sha256": sha256_of(folder / adapter)},
            "strategy-state": {"file": state, "sha256": sha256_of(folder / state), "layout": layouts}}
    write_atomically(folder / MARK, lambda p: p.write_text(json.dumps(mark, indent=1)))
    for stale in folder.iterdir():  # earlier rounds' files, and writes cut short
        if stale.name.lstrip(".").startswith(("checkpoint-round-", "strategy-state-round-")) \
                and stale.name not in (adapter, state):
            stale.unlink(missing_ok=True)


def load_checkpoint(folder: Path, expected: Mapping[str, torch.Tensor] | None = None) -> Checkpoint:
    """The last complete checkpoint in a run folder, checked against ``expected`` (the tensors the
    server sends, by name; by default those of the model the folder's ``config.yaml`` describes).
    ``FileNotFoundError`` when there is none; ``ConfigError`` naming the file when it is from an
    older version, damaged, changed since, or not a checkpoint of this run's model."""
    path = folder / MARK
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"run.resume-from: {folder} has no {MARK}: the run ended before its first round, "
                                "or this is not a run folder")
    _inside(folder, path, "the checkpoint's mark")
    try:
        mark = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ConfigError(f"run.resume-from: {path} is not valid JSON ({err}); refusing to resume from it") from err
    except OSError as err:
        raise ConfigError(f"run.resume-from: {path} cannot be read ({err}); refusing to resume from it") from err
    version = mark.get("version") if isinstance(mark, dict) else None
    if version != VERSION:
        if version is not None:
            written = f"has format version {version!r}"
        elif (folder / LEGACY_STATE).exists():
            written = f"has no format version: an older OmniRad-FL wrote it, with the strategy state in {LEGACY_STATE}, " \
                      "a pickle this version never loads"
        else:
            written = "has no format version: an older OmniRad-FL wrote it"
        raise ConfigError(f"run.resume-from: {path} {written}; this OmniRad-FL reads checkpoint version {VERSION}: "
                          "finish the run with the version that wrote it, or start it afresh")
    arrays_file, state_file = _checked(folder, mark, "arrays"), _checked(folder, mark, "strategy-state")
    try:
        tensors, layouts = load_numpy(state_file), mark["strategy-state"]["layout"]
        state = {name: _unflatten(name, layouts[name], tensors) for name in STRATEGY_STATE if name in layouts}
        checkpoint = Checkpoint(int(mark["round"]), load_file(arrays_file), state)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, SafetensorError, RuntimeError) as err:
        raise ConfigError(f"run.resume-from: {path} does not describe a readable checkpoint "
                          f"({type(err).__name__}: {err}); refusing to resume from it") from err
    if checkpoint.server_round < 1:
        raise ConfigError(f"run.resume-from: {path} records round {checkpoint.server_round}; a checkpoint is written "
                          "after a round, numbered from 1; refusing to resume from it")
    if expected is None:
        expected = expected_arrays(run_folder_config(folder))
    problems = checkpoint_problems(checkpoint, expected)
    if problems:
        raise ConfigError("\n  ".join([f"run.resume-from: {arrays_file} (with {state_file.name}) is not a checkpoint "
                                        "of this run's model; refusing to resume from it:", *problems[:10]]))
    return checkpoint


def run_folder_config(folder: Path) -> Config:
    """The configuration a run folder was made with (its ``config.yaml``), named in any error."""
    path = folder / CONFIG
    _inside(folder, path, "the run's configuration")
    try:
        return load_config(read_config_file(path))
    except (UnicodeDecodeError, RecursionError) as err:
        raise ConfigError(f"run.resume-from: {path}: not a readable configuration ({err})") from err
    except ConfigError as err:
        raise ConfigError(f"run.resume-from: {path}: {err}") from err


def check_same_run(folder: Path, cfg: Config) -> None:
    """Refuse to resume the run in ``folder`` with a configuration that differs from the one it was
    made with, beyond ``MAY_CHANGE_ON_RESUME``: ``ConfigError`` naming every such key, both values."""
    saved, now = to_flat(run_folder_config(folder)), to_flat(cfg)
    if cfg.data.num_sites == FEDERATION_SIZE:  # not learnt yet: the run's is checked once the federation is known
        now["data.num-sites"] = saved.get("data.num-sites")
    differ = sorted(k for k in saved.keys() | now.keys() if k not in MAY_CHANGE_ON_RESUME and saved.get(k) != now.get(k))
    if differ:
        raise ConfigError("\n  ".join([
            f"run.resume-from={folder}: this configuration differs from the one the run was made with "
            f"({folder / CONFIG}) in {len(differ)} key(s) a resumed run may not change; set them as the run had them "
            f"(only {', '.join(sorted(MAY_CHANGE_ON_RESUME))} may change), or start a new run:",
            *(f"{key}: the run has {saved.get(key)!r}, this configuration {now.get(key)!r}" for key in differ)]))


def expected_arrays(cfg: Config) -> dict[str, torch.Tensor] | None:
    """What a checkpoint of ``cfg``'s run holds: the freshly built model's trainable tensors that the
    server sends (not those kept at the sites). None for a multi-task run, which is not resumed."""
    if is_multitask(cfg.multitask):
        return None
    model = new_model(cfg)
    kept = kept_at_sites(cfg, model)
    return {k: v for k, v in trainable_state(model).items() if k not in kept}


def checkpoint_problems(checkpoint: Checkpoint, expected: Mapping[str, torch.Tensor] | None) -> list[str]:
    """Every way the checkpoint's tensors differ from ``expected`` (names, shapes, dtypes) or are
    not finite, and every strategy tensor that does not fit them; empty when it may be used."""
    arrays = checkpoint.arrays
    problems = state_problems(arrays, expected if expected is not None else arrays)
    shapes = {k: tuple(v.shape) for k, v in (expected if expected is not None else arrays).items()}
    for name, value in checkpoint.strategy_state.items():
        if isinstance(value, list):
            pairs = [(f"{name}[{i}]", array, shape) for i, (array, shape) in enumerate(zip(value, shapes.values(), strict=False))]
            if len(value) != len(shapes):
                problems.append(f"strategy state {name!r} has {len(value)} tensors, the model {len(shapes)}")
        else:
            found = value.to_numpy_ndarrays() if isinstance(value, ArrayRecord) else list(value.values())
            keys = list(value.keys())
            if set(keys) != set(shapes):
                problems.append(f"strategy state {name!r} names other tensors than the model "
                                f"({sorted(set(keys) ^ set(shapes))[:5]})")
            pairs = [(f"{name}/{k}", array, shapes[k]) for k, array in zip(keys, found, strict=True) if k in shapes]
        for label, array, shape in pairs:
            if tuple(array.shape) != shape:
                problems.append(f"strategy state {label} has shape {tuple(array.shape)}, the model's tensor {shape}")
            elif array.dtype.kind != "f" or not np.isfinite(array).all():
                problems.append(f"strategy state {label} is not finite floating point ({array.dtype})")
    return problems


def _inside(folder: Path, path: Path, what: str) -> None:
    """Refuse a file of the run folder that is a symbolic link (it could lead anywhere)."""
    if path.is_symlink():
        raise ConfigError(f"run.resume-from: {path} ({what}) is a symbolic link; a run folder's files must be "
                          "its own: refusing to resume from it")


def _checked(folder: Path, mark: dict[str, Any], part: str) -> Path:
    """The file the mark names for ``part``, once its SHA-256 matches the one the mark records."""
    entry = mark.get(part)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise ConfigError(f"run.resume-from: {folder / MARK} has no file and SHA-256 for {part}; refusing to resume "
                          "from it")
    name = entry["file"]
    path = folder / name
    if Path(name).name != name or name in (".", "..") or "\x00" in name or not path.is_file():
        raise ConfigError(f"run.resume-from: {folder / MARK} names {part} file {name!r}, which is not a file in "
                          "the run folder; refusing to resume from it")
    _inside(folder, path, f"the checkpoint's {part}")
    if sha256_of(path) != entry["sha256"]:
        raise ConfigError(f"run.resume-from: {path} does not match the SHA-256 that {MARK} records for it: the "
                          "file changed after the checkpoint was written; refusing to resume from it")
    return path


def restore_strategy_state(strategy: Strategy, state: dict[str, StateValue]) -> None:
    """Put a checkpoint's strategy state back into the Flower strategy under any wrappers."""
    strategy = flower_strategy(strategy)
    for name, value in state.items():
        setattr(strategy, name, value)
