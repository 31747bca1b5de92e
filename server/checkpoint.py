"""Checkpoint after every round, and resume a run that stopped (``run.resume-from``).

After each round the run folder gets the global adapter (``checkpoint.safetensors``), what the
strategy has accumulated (``strategy-state.pkl``: FedAdam/FedYogi/FedAdagrad moments, FedAvgM's
momentum) and, written last as the commit mark, ``checkpoint.json`` with the round number. Every
file is written to a temporary name and renamed, so a server killed mid-write leaves the previous
checkpoint whole. A resumed server continues with the next round, numbered as in the
uninterrupted run, so sites draw the same random numbers and the run ends with the same metrics.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp.strategy import Strategy
from safetensors.torch import load_file, save_file

from omnirad_fl.strategies import flower_strategy

# What Flower 1.41's strategies accumulate across rounds (FedOpt family, FedAvgM); the rest of a
# strategy is its configuration, rebuilt from the run's config.
STRATEGY_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector")
MARK, ARRAYS, STATE = "checkpoint.json", "checkpoint.safetensors", "strategy-state.pkl"


@dataclass
class Checkpoint:
    server_round: int
    arrays: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(folder: Path, server_round: int, arrays: dict[str, torch.Tensor], strategy: Strategy) -> None:
    """The state after ``server_round``: global adapter, strategy state (of the Flower strategy under
    any wrappers), then the commit mark."""
    strategy = flower_strategy(strategy)
    state = {name: getattr(strategy, name) for name in STRATEGY_STATE if getattr(strategy, name, None) is not None}
    _replace_atomically(folder / ARRAYS, lambda p: save_file({k: v.contiguous() for k, v in arrays.items()}, p))
    _replace_atomically(folder / STATE, lambda p: p.write_bytes(pickle.dumps(state)))
    _replace_atomically(folder / MARK, lambda p: p.write_text(json.dumps({"round": server_round})))


def load_checkpoint(folder: Path) -> Checkpoint:
    """The last complete checkpoint in a run folder; ``FileNotFoundError`` names what is missing."""
    mark = folder / MARK
    if not mark.exists():
        raise FileNotFoundError(f"run.resume-from: {folder} has no {MARK}: the run ended before its first round, "
                                "or this is not a run folder")
    server_round = int(json.loads(mark.read_text())["round"])
    # The server writes this file itself; it is read only from the server's own run folder.
    state = pickle.loads((folder / STATE).read_bytes())  # noqa: S301
    return Checkpoint(server_round, load_file(folder / ARRAYS), state)


def restore_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Put a checkpoint's strategy state back into the Flower strategy under any wrappers."""
    strategy = flower_strategy(strategy)
    for name, value in state.items():
        setattr(strategy, name, value)
