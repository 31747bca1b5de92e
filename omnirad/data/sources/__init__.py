"""Data sources, by the value of ``data.dataset``: importing this package registers them all."""

from omnirad.data.sources import embedded, files, medmnist  # noqa: F401 - each module registers its source
from omnirad.data.sources.registry import DATA_SOURCES, DataSource, register_source, source_of

__all__ = ["DATA_SOURCES", "DataSource", "register_source", "source_of"]
