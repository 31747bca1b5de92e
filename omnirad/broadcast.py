"""What the server gathers once from every site before round 1 and then sends with every round's
instructions: the spectral knowledge bank (``strategy.name=spectral``) and the feature
standardisation (``model.standardise-features``). Both are fixed inputs of the model, not adapter
tensors: they are set on each freshly built model and never trained or averaged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from omnirad.spectral import bank_from_config, bank_to_config
from omnirad.standardise import Standardisation


@dataclass(frozen=True)
class Broadcast:
    bank: torch.Tensor | None = None
    standardisation: Standardisation | None = None

    def to_config(self) -> dict[str, list[float] | int]:
        """ConfigRecord values for the round's instructions."""
        return {**(bank_to_config(self.bank) if self.bank is not None else {}),
                **(self.standardisation.to_config() if self.standardisation is not None else {})}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Broadcast:
        return cls(bank_from_config(config), Standardisation.from_config(config))

    def apply(self, model: nn.Module) -> nn.Module:
        """Set what this broadcast holds on a freshly built model (which must accept it)."""
        # set_bank and set_standardisation are the model's own methods, which nn.Module's typing cannot see
        if self.bank is not None:
            model.set_bank(self.bank)  # type: ignore[operator]
        if self.standardisation is not None:
            model.set_standardisation(self.standardisation)  # type: ignore[operator]
        return model
