"""What a site keeps between the rounds of a run, on its own disk: its privacy account and its own tensors.

A site's DP ledger, its personal tensors (``personalization.mode``) and its spectral suffix
prompts must outlive the process that trains: a site that restarted and began its privacy
account from zero could spend its whole budget again, and the epsilon it reports would no longer
be what the run cost it. One file per run in the site's state folder, ``<run key>.safetensors``:
the tensors, and in the file's header (JSON, ``safetensors.safe_open(path, "pt").metadata()``)
the format version, the rounds the site trained in and the ledger. Written whole and renamed, so
a site killed mid-write keeps its previous state. No pickle.

The ledger only grows: a round trained again after the server resumed from an earlier checkpoint
is counted again, since its first update may have been seen. Personal tensors are kept for the
last two rounds trained, so that a round trained again starts from the tensors before it, as it
did the first time.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from omnirad.durable import write_atomically
from omnirad.privacy import PrivacyLedger

log = logging.getLogger(__name__)
VERSION = 1
HEADER = "omnirad-site-state"  # the safetensors metadata key holding the JSON
KEPT_ROUNDS = 2  # personal tensors of the last rounds trained: a resumed server is at most one round behind
RUN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # a file name, never a path


class SiteStateError(RuntimeError):
    """The site's state for a run cannot be used. The message names no path (it goes back to
    the server); the site's log has the file."""


class SiteStateLost(SiteStateError):
    """The server has seen this site train in more rounds of the run than its state records: its
    privacy account is missing or older, and a fresh one would understate what it has spent."""


@dataclass
class SiteState:
    """One site's state in one run."""

    trained_rounds: list[int] = field(default_factory=list)  # every round trained, a round trained again twice
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)
    personal: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # round -> tensors after it

    def personal_before(self, server_round: int) -> dict[str, torch.Tensor] | None:
        """The personal tensors to start ``server_round`` from (those of the last round before it);
        None before the site has trained."""
        earlier = [r for r in self.personal if r < server_round]
        if earlier:
            return self.personal[max(earlier)]
        if self.personal and any(r < server_round for r in self.trained_rounds):
            raise SiteStateError(f"this site keeps its personal tensors of rounds {sorted(self.personal)} only, not "
                                 f"those it trained before round {server_round}")
        return None

    def personal_after(self, server_round: int) -> dict[str, torch.Tensor] | None:
        """The personal tensors to evaluate ``server_round`` with (those it ended with)."""
        return self.personal_before(server_round + 1)

    def trained(self, server_round: int, personal: dict[str, torch.Tensor] | None) -> None:
        """Record a round trained, and the personal tensors it ended with."""
        self.trained_rounds.append(server_round)
        if personal is not None:
            kept = {r: t for r, t in self.personal.items() if r < server_round}  # later ones belong to a lost future
            kept[server_round] = personal
            self.personal = {r: kept[r] for r in sorted(kept)[-KEPT_ROUNDS:]}

    def check_continuity(self, rounds_seen_by_server: int, *, privacy: bool) -> None:
        """Raise ``SiteStateLost`` when, under DP, the server counts more rounds trained by this site
        than its state does; without DP the site goes on from what it has, with a warning."""
        if rounds_seen_by_server <= len(self.trained_rounds):
            return
        if privacy:
            raise SiteStateLost(
                f"the server counts {rounds_seen_by_server} rounds trained by this site in this run, its state "
                f"store {len(self.trained_rounds)}: its privacy account is missing or older than what it spent. "
                "It will not start a fresh one; restore the site's state folder (site-state-dir)")
        log.warning("the server counts %d rounds trained by this site, its state store %d: it goes on from the "
                    "personal tensors it has", rounds_seen_by_server, len(self.trained_rounds))


class SiteStateStore:
    """A site's state folder: one file per run, named by the run's key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, run_key: str) -> Path:
        if not RUN_KEY.match(run_key):
            raise SiteStateError(f"the run key {run_key[:40]!r} is not a plain name (letters, digits, '-', '_')")
        return self.folder / f"{run_key}.safetensors"

    def load(self, run_key: str) -> SiteState:
        """The run's state, or a fresh one when this site has none for it."""
        path = self.path(run_key)
        if not path.exists():
            return SiteState()
        try:
            with safe_open(str(path), framework="pt") as stored:
                header = json.loads((stored.metadata() or {}).get(HEADER, "null"))
                tensors = {key: stored.get_tensor(key) for key in stored.keys()}
        except (OSError, SafetensorError, ValueError, RecursionError) as err:  # JSON's errors are ValueErrors
            log.error("%s: unreadable site state: %s", path, err)
            raise SiteStateError("this site's state for the run is unreadable; its log names the file") from err
        if not isinstance(header, dict) or header.get("version") != VERSION:
            version = header.get("version") if isinstance(header, dict) else None
            log.error("%s: site state format version %r, this OmniRad-FL reads version %d", path, version, VERSION)
            raise SiteStateError(f"this site's state for the run has format version {version!r}; this OmniRad-FL "
                                 f"reads version {VERSION}")
        try:  # a header of the right version whose fields are damaged is as unreadable as a damaged file
            personal: dict[int, dict[str, torch.Tensor]] = {}
            for key, tensor in tensors.items():
                server_round, name = key.split("/", 1)
                personal.setdefault(int(server_round), {})[name] = tensor
            rounds = header["trained-rounds"]
            if not isinstance(rounds, list):
                raise TypeError(f"trained-rounds is a {type(rounds).__name__}, not a list")
            ledger = header["ledger"]
            for part in ("noise", "rate", "steps"):
                if not isinstance(ledger[part], list) or not all(
                        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in ledger[part]):
                    raise TypeError(f"ledger.{part} is not a list of finite numbers")
            return SiteState([int(r) for r in rounds], PrivacyLedger.from_record(ledger), personal)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            log.error("%s: damaged site state header or tensor names: %s: %s", path, type(err).__name__, err)
            raise SiteStateError("this site's state for the run is damaged (its header or tensor names); its log "
                                 "names the file") from err

    def save(self, run_key: str, state: SiteState) -> None:
        """Write the run's state whole, replacing the previous file in one rename."""
        path = self.path(run_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"version": VERSION, "trained-rounds": state.trained_rounds, "ledger": state.ledger.to_record()}
        tensors = {f"{r}/{name}": t.detach().cpu().clone().contiguous() for r, named in state.personal.items()
                   for name, t in named.items()}
        write_atomically(path, lambda p: save_file(tensors, p, metadata={HEADER: json.dumps(header)}))
