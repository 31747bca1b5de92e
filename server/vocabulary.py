"""The federated vocabulary phase: before round 1 of a captioning run on caption site files with no
vocabulary file (``data.vocabulary`` empty), every site sends the word counts of its training
captions (``omnirad.vocabulary``: no word rarer than ``data.vocabulary-min-count`` at that site)
and the server makes the run's vocabulary from their sums. The run folder keeps it
(``vocabulary.txt``, which the folder's config.yaml names), and every message to the sites carries
its words, so that a site holding no vocabulary file gives every word the run's id.

Under ``privacy.secure-sum`` the counts are a secure sum (``server/secure_sum.py``): each site sends
its words alone, the server sends back their union, and the sites' counts on the union reach it
only as their total; the vocabulary is the plain one (docs/secure-aggregation.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from omnirad.captions import SPECIAL_TOKENS
from omnirad.config import Config
from omnirad.data.sites import task_info
from omnirad.data.sources import source_of
from omnirad.multitask import TaskGroup, is_multitask
from omnirad.protocol import QUERY_WORD_COUNTS, VOCABULARY, WORD_COUNTS
from omnirad.tasks import CAPTIONING, TaskSpec
from omnirad.vocabulary import (
    COUNTS,
    SECURE_SUM_WORD_COUNTS,
    WORDS,
    SiteWordCounts,
    federated_vocabulary,
    pooled_counts,
    site_words,
)
from omnirad_fl.server.closed_form import secure_report, site_label
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.server.secure_sum import secure_sum
from omnirad_fl.strategies.multitask import GroupGrid
from omnirad_fl.strategies.site_queries import ask_every_site

log = logging.getLogger(__name__)
Reply = TypeVar("Reply")


def captions_from_site_files(cfg: Config) -> bool:
    """A single-task captioning run whose sites read caption files (``files`` or ``deployment``)."""
    return source_of(cfg.data.dataset).natural_split and cfg.data.task == CAPTIONING and not is_multitask(cfg.multitask)


def needs_word_count(cfg: Config) -> bool:
    """The sites' captions name no shared vocabulary file: a new run counts one before round 1 (a
    resumed run names its folder's ``vocabulary.txt``, or ``run.resume-from`` refuses it by that key)."""
    return captions_from_site_files(cfg) and not cfg.data.vocabulary and not cfg.run.resume_from


def site_replies(grid: Grid, parse: Callable[[Mapping[str, Any]], Reply]) -> dict[int, tuple[str, Reply]]:
    """Every site's reply to ``query.word_counts``, by node: how the server names the site (``site N``)
    and the reply's record as ``parse`` checks it. Raises ``RuntimeError`` naming the site whose reply
    is missing or malformed."""
    replies = {}
    for node, content in ask_every_site(grid, QUERY_WORD_COUNTS, "caption vocabulary").items():
        who = site_label(node, content)
        record = content.get(WORD_COUNTS)
        try:
            if not isinstance(record, ConfigRecord):
                raise ValueError("the reply holds no word counts")
            replies[node] = (who.split(" (node")[0], parse(dict(record)))
        except ValueError as err:
            raise RuntimeError(f"caption vocabulary: {who}: {err}") from err
    if not replies:
        raise RuntimeError("caption vocabulary: no site is connected")
    return replies


def no_words(cfg: Config) -> RuntimeError:
    return RuntimeError(f"caption vocabulary: no site has a word seen data.vocabulary-min-count="
                        f"{cfg.data.vocabulary_min_count} times in its training captions")


def plain_counts(grid: Grid, cfg: Config) -> tuple[list[SiteWordCounts], dict[str, int], dict[str, Any]]:
    """Every site's words and counts, in the clear; the bytes each sent."""
    replies = site_replies(grid, lambda record: SiteWordCounts.from_record(
        record, min_count=cfg.data.vocabulary_min_count))
    return [counts for _, counts in replies.values()], {who: counts.nbytes for who, counts in replies.values()}, {}


def secure_counts(grid: Grid, cfg: Config) -> tuple[list[SiteWordCounts], dict[str, int], dict[str, Any]]:
    """``privacy.secure-sum``: every site's words (what it sends in the clear too), then the sum of
    their counts on the union of words, which alone the server learns of the counts; the bytes each
    site sent (its words and both secure-sum steps); summary.json's ``secure-sum`` entry. Raises
    ``RuntimeError`` naming the phase, never a site, when the total fails its checks."""
    replies = site_replies(grid, site_words)
    union = sorted(frozenset[str]().union(*(words for _, words in replies.values())))
    if not union:
        raise no_words(cfg)
    result = secure_sum(grid, sorted(replies), SECURE_SUM_WORD_COUNTS, "caption vocabulary",
                        RecordDict({WORD_COUNTS: ConfigRecord({WORDS: union})}), timeout=cfg.strategy.round_timeout)
    try:
        total = pooled_counts(union, result.sums[COUNTS], [replies[node][1] for node in result.participants],
                              min_count=cfg.data.vocabulary_min_count)
    except (KeyError, ValueError) as err:
        raise RuntimeError(f"caption vocabulary: the secure sum fails its checks: {err}") from err
    sent = {replies[node][0]: sum(len(word.encode("utf-8")) for word in replies[node][1]) + result.bytes_per_site[node]
            for node in result.participants}
    return [total], sent, secure_report(result)


def gather_vocabulary(grid: Grid, cfg: Config) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The run's vocabulary (special tokens first) from every site's word counts, and summary.json's
    entry. Raises ``RuntimeError`` naming the site whose reply is missing or malformed (under
    ``privacy.secure-sum``, naming the phase when the summed counts fail their checks)."""
    started = time.perf_counter()
    counted, sent, secure = (secure_counts if cfg.privacy.secure_sum else plain_counts)(grid, cfg)
    vocabulary = federated_vocabulary(counted, cfg.data.vocabulary_max_words)
    words = len(vocabulary) - len(SPECIAL_TOKENS)
    if not words:
        raise no_words(cfg)
    log.info("Caption vocabulary: %d words from the word counts of %d sites (none rarer than %d at a site%s), "
             "%.1f KiB per site", words, len(sent), cfg.data.vocabulary_min_count,
             "; counts summed securely" if secure else "", sum(sent.values()) / 1024 / len(sent))
    return vocabulary, {"words": words, "min-count": cfg.data.vocabulary_min_count,
                        "max-words": cfg.data.vocabulary_max_words, "bytes-per-site": dict(sorted(sent.items())),
                        **secure, "seconds": round(time.perf_counter() - started, 3)}


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
