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
from omnirad.config.schema import DataConfig
from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import read_site_file
from omnirad.data.sources.registry import DataSource, register_source
from omnirad.errors import ConfigError, bad_value, require
from omnirad.tasks import CAPTIONING, KINDS, SEGMENTATION, TaskSpec


def read_options(data: DataConfig) -> ReadOptions:
    """How this run reads site files: its image size and, for volumes, window and slice axis."""
    spacing = tuple(float(mm) for mm in comma_list(data.spacing))
    return ReadOptions(data.size, data.window, data.slice_axis, spacing)


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

    def check_task(self, data: DataConfig) -> None:
        if data.task not in KINDS:
            raise bad_value("data.task", data.task, "one of " + ", ".join(KINDS))
        if data.task == CAPTIONING:
            if data.vocabulary and not Path(data.vocabulary).expanduser().is_file():
                raise bad_value("data.vocabulary", data.vocabulary, "the vocabulary file every site shares "
                                "(python -m omnirad.captions CSV... -o FILE writes one), or empty for a "
                                "federated word count")
            require(data.vocabulary_min_count >= 1, "data.vocabulary-min-count", data.vocabulary_min_count, ">= 1")
            require(data.vocabulary_max_words >= 0, "data.vocabulary-max-words", data.vocabulary_max_words,
                    ">= 0 (0: no limit)")
            return
        if not (data.num_classes >= 2 or (data.task.startswith("multi-label") and data.num_classes >= 1)):
            raise bad_value("data.num-classes", data.num_classes, "the number of classes (labels) in the site files")

    def task(self, data: DataConfig) -> TaskSpec:
        return file_task(data.task, data.num_classes, data.vocabulary)

    def test_set(self, data: DataConfig) -> LabelledImages | None:
        """The test file's test split (its training split when it has none); it need hold no
        training split, as a site's file must."""
        if not data.test_file:
            return None
        splits = read_site_file(data.test_file, self.task(data), replace(read_options(data), needs_training=False))
        held = splits.get("test", splits.get("train"))
        if held is None:
            raise DataFileError(f"{data.test_file}: data.test-file holds no test (or train) split, only "
                                f"{', '.join(splits)}")
        return held


class SiteFiles(NaturalSplit):
    name = "files"

    def check(self, data: DataConfig) -> None:
        files = comma_list(data.site_files)
        if not files:
            raise bad_value("data.site-files", data.site_files, "comma-separated files, one per site")
        if data.num_sites and len(files) != data.num_sites:  # 0: the federation's size, checked then
            raise bad_value("data.num-sites", data.num_sites, f"{len(files)}, one site per file in data.site-files")

    def site_file(self, data: DataConfig, site_id: int) -> str:
        if not 0 <= site_id < require_num_sites(data):
            raise ValueError(f"site {site_id} does not exist: data.num-sites={data.num_sites}")
        return comma_list(data.site_files)[site_id]


DEPLOYMENT = "deployment"


class Deployment(NaturalSplit):
    name = DEPLOYMENT
    deployed = True

    def site_file(self, data: DataConfig, site_id: int) -> str:
        return data.site_files  # the site's own view of the run configuration names its one file


register_source(SiteFiles())
register_source(Deployment())
