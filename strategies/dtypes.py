"""Keep the global adapter in the model's own dtypes, whatever a strategy's arithmetic returns.

Flower 1.41's FedAdam scales its step by a NumPy float64 scalar, which (NumPy 2 promotion rules)
turns float32 arrays into float64 after the first round: the global adapter would then travel at
twice the bytes, and update validation, which expects the global model's dtypes, would refuse
every site's float32 reply. ``keeps_dtypes`` casts the aggregate back to the dtypes of the arrays
the round started from; the strategy's own optimiser state is left as it keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


def keeps_dtypes(strategy_cls: type[Strategy]) -> type[Strategy]:
    """A subclass of ``strategy_cls`` whose aggregated arrays have the round's starting dtypes."""

    class KeepsDtypes(strategy_cls):  # type: ignore[misc, valid-type]
        _dtypes: dict[str, np.dtype]

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            self._dtypes = {key: arrays[key].numpy().dtype for key in arrays}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None:
                arrays = ArrayRecord({key: Array(np.asarray(arrays[key].numpy(), dtype=self._dtypes.get(key)))
                                      for key in arrays})
            return arrays, metrics

    KeepsDtypes.__name__ = KeepsDtypes.__qualname__ = strategy_cls.__name__
    return KeepsDtypes
