"""The federated vocabulary phase: before round 1 of a captioning run on caption site files with no
vocabulary file (``data.vocabulary`` empty), every site sends the word counts of its training
captions (``omnirad.vocabulary``: no word rarer than ``data.vocabulary-min-count`` at that site)
and the server makes the run's vocabulary from their sums. The run folder keeps it
(``vocabulary.txt``, which the folder's config.yaml names), and every message to the sites carries
its words, so that a site holding no vocabulary file gives every word the run's id.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from omnirad.captions import SPECIAL_TOKENS
from omnirad.config import Config
from omnirad.data.sites import task_info
from omnirad.data.sources import source_of
from omnirad.multitask import TaskGroup, is_multitask
from omnirad.protocol import QUERY_WORD_COUNTS, VOCABULARY, WORD_COUNTS
from omnirad.tasks import CAPTIONING, TaskSpec
from omnirad.vocabulary import SiteWordCounts, federated_vocabulary
from omnirad_fl.server.closed_form import site_label
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.strategies.multitask import GroupGrid
from omnirad_fl.strategies.site_queries import ask_every_site

log = logging.getLogger(__name__)


def captions_from_site_files(cfg: Config) -> bool:
    """A single-task captioning run whose sites read caption files (``files`` or ``deployment``)."""
    return source_of(cfg.data.dataset).natural_split and cfg.data.task == CAPTIONING and not is_multitask(cfg.multitask)


def needs_word_count(cfg: Config) -> bool:
    """The sites' captions name no shared vocabulary file: a new run counts one before round 1 (a
    resumed run names its folder's ``vocabulary.txt``, or ``run.resume-from`` refuses it by that key)."""
    return captions_from_site_files(cfg) and not cfg.data.vocabulary and not cfg.run.resume_from


def gather_vocabulary(grid: Grid, cfg: Config) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The run's vocabulary (special tokens first) from every site's word counts, and summary.json's
    entry. Raises ``RuntimeError`` naming the site whose reply is missing or malformed."""
    started = time.perf_counter()
    replies, sent = [], {}
    for node, content in ask_every_site(grid, QUERY_WORD_COUNTS, "caption vocabulary").items():
        who = site_label(node, content)
        record = content.get(WORD_COUNTS)
        try:
            if not isinstance(record, ConfigRecord):
                raise ValueError("the reply holds no word counts")
            counts = SiteWordCounts.from_record(dict(record), min_count=cfg.data.vocabulary_min_count)
        except ValueError as err:
            raise RuntimeError(f"caption vocabulary: {who}: {err}") from err
        replies.append(counts)
        sent[who.split(" (node")[0]] = counts.nbytes
    if not replies:
        raise RuntimeError("caption vocabulary: no site is connected")
    vocabulary = federated_vocabulary(replies, cfg.data.vocabulary_max_words)
    words = len(vocabulary) - len(SPECIAL_TOKENS)
    if not words:
        raise RuntimeError(f"caption vocabulary: no site has a word seen data.vocabulary-min-count="
                           f"{cfg.data.vocabulary_min_count} times in its training captions")
    log.info("Caption vocabulary: %d words from the word counts of %d sites (none rarer than %d at a site), "
             "%.1f KiB per site", words, len(replies), cfg.data.vocabulary_min_count,
             sum(sent.values()) / 1024 / len(sent))
    return vocabulary, {"words": words, "min-count": cfg.data.vocabulary_min_count,
                        "max-words": cfg.data.vocabulary_max_words,
                        "bytes-per-site": dict(sorted(sent.items())), "seconds": round(time.perf_counter() - started, 3)}


@PHASES.register("vocabulary", "vocabulary", applies=lambda run: needs_word_count(run.cfg))
def count_vocabulary(run: ServerRun) -> None:
    """Before the run folder: its config.yaml names the vocabulary.txt it keeps."""
    run.vocabulary, run.summary["vocabulary"] = gather_vocabulary(run.grid, run.cfg)


def group_vocabularies(grid: Grid, cfg: Config, groups: dict[str, TaskGroup]
                       ) -> tuple[dict[str, TaskGroup], dict[str, dict[str, Any]]]:
    """A multi-task run: each captioning group declared without words gets the vocabulary its own
    sites count (no other site is asked); summary.json's entries by task."""
    counted, entries = dict(groups), {}
    for name, group in groups.items():
        if group.spec.captioning and not group.spec.label_names:
            vocabulary, entries[name] = gather_vocabulary(GroupGrid(grid, group.nodes), cfg)
            counted[name] = dataclasses.replace(group, spec=TaskSpec(CAPTIONING, vocabulary))
    return counted, entries


def vocabulary_instructions(cfg: Config) -> dict[str, list[str]]:
    """Captioning on site files: the run's words with every message (a few KiB), so that a site
    without the vocabulary file (a federated vocabulary, or any deployed site) uses the run's ids."""
    if not captions_from_site_files(cfg):
        return {}
    return {VOCABULARY: list(task_info(cfg.data).label_names[len(SPECIAL_TOKENS):])}
