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
"""

from __future__ import annotations

import json
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

from omnirad.config import ConfigError
from omnirad.durable import sha256_of, write_atomically
from omnirad_fl.strategies import flower_strategy

# What Flower 1.42's strategies accumulate across rounds (FedOpt family: dicts of arrays; FedAvgM:
# an ArrayRecord and a list of arrays); the rest of a strategy is its configuration, rebuilt from
# the run's config.
STRATEGY_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector")
MARK, VERSION = "checkpoint.json", 2
LEGACY_STATE = "strategy-state.pkl"  # version 1 kept the strategy state as a pickle
StateValue = dict[str, np.ndarray] | list[np.ndarray] | ArrayRecord


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


def load_checkpoint(folder: Path) -> Checkpoint:
    """The last complete checkpoint in a run folder. ``FileNotFoundError`` when there is none;
    ``ConfigError`` naming the file when it is from an older version, damaged or changed since."""
    path = folder / MARK
    if not path.exists():
        raise FileNotFoundError(f"run.resume-from: {folder} has no {MARK}: the run ended before its first round, "
                                "or this is not a run folder")
    try:
        mark = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"run.resume-from: {path} is not valid JSON ({err}); refusing to resume from it") from err
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
        return Checkpoint(int(mark["round"]), load_file(arrays_file), state)
    except (KeyError, TypeError, ValueError, SafetensorError) as err:
        raise ConfigError(f"run.resume-from: {path} does not describe a readable checkpoint "
                          f"({type(err).__name__}: {err}); refusing to resume from it") from err


def _checked(folder: Path, mark: dict[str, Any], part: str) -> Path:
    """The file the mark names for ``part``, once its SHA-256 matches the one the mark records."""
    entry = mark.get(part)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise ConfigError(f"run.resume-from: {folder / MARK} has no file and SHA-256 for {part}; refusing to resume "
                          "from it")
    name = entry["file"]
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise ConfigError(f"run.resume-from: {folder / MARK} names {part} file {name!r}, which is not a file in "
                          "the run folder; refusing to resume from it")
    if sha256_of(path) != entry["sha256"]:
        raise ConfigError(f"run.resume-from: {path} does not match the SHA-256 that {MARK} records for it: the "
                          "file changed after the checkpoint was written; refusing to resume from it")
    return path


def restore_strategy_state(strategy: Strategy, state: dict[str, StateValue]) -> None:
    """Put a checkpoint's strategy state back into the Flower strategy under any wrappers."""
    strategy = flower_strategy(strategy)
    for name, value in state.items():
        setattr(strategy, name, value)
