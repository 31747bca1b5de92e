"""Natural splits: each site has its own data file, as hospitals do.

``files`` simulates a natural split on one machine (``data.site-files``: one file per site);
``deployment`` is a real federation, where each site names its own file in its site
configuration (``omnirad-client`` puts it in the site's view of ``data.site-files``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omnirad.captions import read_vocabulary
from omnirad.config.federation import require_num_sites
from omnirad.config.io import comma_list
from omnirad.config.schema import Config
from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import read_site_file
from omnirad.data.sources.registry import DataSource, register_source
from omnirad.errors import ConfigError, bad_value, require
from omnirad.tasks import CAPTIONING, KINDS, SEGMENTATION, TaskSpec


def read_options(cfg: Config) -> ReadOptions:
    """How this run reads site files: its image size and, for volumes, window and slice axis."""
    spacing = tuple(float(mm) for mm in comma_list(cfg.data.spacing))
    return ReadOptions(cfg.data.size, cfg.data.window, cfg.data.slice_axis, spacing)


def file_task(kind: str, num_classes: int, vocabulary: str = "") -> TaskSpec:
    """The task of a site file: files carry no label names, so classes are numbered; captions are
    read with the shared vocabulary file."""
    if kind == CAPTIONING:
        if not vocabulary:
            raise ConfigError("data.vocabulary: no vocabulary yet; with none configured the run builds one by a "
                              "federated word count before round 1, and sites read captions only after it")
        return TaskSpec(CAPTIONING, read_vocabulary(vocabulary))
    if kind == SEGMENTATION:
        return TaskSpec(SEGMENTATION, ("background", *(f"class {k}" for k in range(1, num_classes))))
    return TaskSpec(kind, tuple(str(k) for k in range(num_classes)))


class NaturalSplit(DataSource):
    natural_split = True

    def check(self, cfg: Config) -> None:
        d = cfg.data
        if cfg.multitask.site_tasks:  # multi-task: each task has its own kind and classes
            return
        if d.task not in KINDS:
            raise bad_value("data.task", d.task, "one of " + ", ".join(KINDS))
        if d.task == CAPTIONING:
            if d.vocabulary and not Path(d.vocabulary).expanduser().is_file():
                raise bad_value("data.vocabulary", d.vocabulary, "the vocabulary file every site shares "
                                "(python -m omnirad.captions CSV... -o FILE writes one), or empty for a "
                                "federated word count")
            require(d.vocabulary_min_count >= 1, "data.vocabulary-min-count", d.vocabulary_min_count, ">= 1")
            require(d.vocabulary_max_words >= 0, "data.vocabulary-max-words", d.vocabulary_max_words,
                    ">= 0 (0: no limit)")
            return
        if not (d.num_classes >= 2 or (d.task.startswith("multi-label") and d.num_classes >= 1)):
            raise bad_value("data.num-classes", d.num_classes, "the number of classes (labels) in the site files")

    def task(self, cfg: Config) -> TaskSpec:
        return file_task(cfg.data.task, cfg.data.num_classes, cfg.data.vocabulary)

    def test_set(self, cfg: Config) -> LabelledImages | None:
        """The test file's test split (its training split when it has none); it need hold no
        training split, as a site's file must."""
        if not cfg.data.test_file:
            return None
        splits = read_site_file(cfg.data.test_file, self.task(cfg), replace(read_options(cfg), needs_training=False))
        held = splits.get("test", splits.get("train"))
        if held is None:
            raise DataFileError(f"{cfg.data.test_file}: data.test-file holds no test (or train) split, only "
                                f"{', '.join(splits)}")
        return held


class SiteFiles(NaturalSplit):
    name = "files"

    def check(self, cfg: Config) -> None:
        files = comma_list(cfg.data.site_files)
        if not files:
            raise bad_value("data.site-files", cfg.data.site_files, "comma-separated files, one per site")
        if cfg.data.num_sites and len(files) != cfg.data.num_sites:  # 0: the federation's size, checked then
            raise bad_value("data.num-sites", cfg.data.num_sites, f"{len(files)}, one site per file in data.site-files")
        super().check(cfg)

    def site_file(self, cfg: Config, site_id: int) -> str:
        if not 0 <= site_id < require_num_sites(cfg):
            raise ValueError(f"site {site_id} does not exist: data.num-sites={cfg.data.num_sites}")
        return comma_list(cfg.data.site_files)[site_id]


DEPLOYMENT = "deployment"


class Deployment(NaturalSplit):
    name = DEPLOYMENT
    deployed = True

    def site_file(self, cfg: Config, site_id: int) -> str:
        return cfg.data.site_files  # the site's own view of the run configuration names its one file


register_source(SiteFiles())
register_source(Deployment())
