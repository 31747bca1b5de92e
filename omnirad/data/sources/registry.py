"""What a value of ``data.dataset`` means: a data source, found in one registry.

A source says what task its data is, where a simulated federation's pooled training images and the
server's test images come from, or, for a natural split, which file each site reads. A new kind of
data is one module with a ``DataSource`` subclass and one ``DATA_SOURCES.add`` line.
"""

from __future__ import annotations

from omnirad.config.schema import DataConfig
from omnirad.data.labelled import LabelledImages
from omnirad.errors import bad_value
from omnirad.registry import Registry
from omnirad.tasks import TaskSpec


class DataSource:
    """One kind of ``data.dataset``. Simulated sources share a pool out among sites
    (``pool``); natural splits (``natural_split``) give each site its own file (``site_file``)."""

    name = ""  # the registry name; by default also the value of data.dataset that picks the source
    natural_split = False
    deployed = False  # sites run at their hospitals and connect on their own: the server waits for them
    describes = ""  # how the source appears in the list of accepted values, when not by its name

    def claims(self, dataset: str) -> bool:
        """Whether ``data.dataset`` picks this source (MedMNIST's source is picked by its flags)."""
        return dataset == self.name

    def check(self, data: DataConfig) -> None:
        """Raise ``ConfigError`` naming the key when the data keys do not fit this source."""

    def check_task(self, data: DataConfig) -> None:
        """Raise ``ConfigError`` naming the key when the task keys (``data.task``, its classes) do
        not fit this source; not called for a multi-task run, whose tasks each have their own."""

    def task(self, data: DataConfig) -> TaskSpec:
        raise NotImplementedError

    def pool(self, data: DataConfig) -> LabelledImages:
        """The training pool a simulated split shares out among sites."""
        raise ValueError(f"data.dataset={data.dataset} is a natural split: there is no pool to partition")

    def test_set(self, data: DataConfig) -> LabelledImages | None:
        """The server's held-out test set, never shared out among sites; None when there is none."""
        return None

    def site_file(self, data: DataConfig, site_id: int) -> str:
        """A natural split: the file site ``site_id`` reads."""
        raise NotImplementedError

    def partition_class_names(self, data: DataConfig) -> tuple[str, ...]:
        """Names of the classes a split is stratified by (``partition_labels``)."""
        return self.task(data).label_names


DATA_SOURCES: Registry[DataSource] = Registry("data.dataset")


def register_source(source: DataSource) -> DataSource:
    """Add ``source`` under its ``name``."""
    return DATA_SOURCES.add(source.name, source)


def source_of(dataset: str) -> DataSource:
    """The source ``data.dataset`` names; ``ConfigError`` listing what is accepted otherwise."""
    for _, source in DATA_SOURCES.items():
        if source.claims(dataset):
            return source
    accepted = ", ".join(source.describes or name for name, source in DATA_SOURCES.items())
    raise bad_value("data.dataset", dataset, accepted)
