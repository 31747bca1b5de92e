"""What the server gathers once from every site before round 1 and then sends with every round's
instructions: the spectral knowledge bank (``strategy.name=spectral``) and the feature
standardisation (``model.standardise-features``). Both are fixed inputs of the model, not adapter
tensors: they are set on each freshly built model and never trained or averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omnirad.spectral import bank_from_config, bank_to_config
from omnirad.standardise import Standardisation


@dataclass(frozen=True)
class Broadcast:
    bank: torch.Tensor | None = None
    standardisation: Standardisation | None = None

    def to_config(self) -> dict:
        """ConfigRecord values for the round's instructions."""
        return {**(bank_to_config(self.bank) if self.bank is not None else {}),
                **(self.standardisation.to_config() if self.standardisation is not None else {})}

    @classmethod
    def from_config(cls, config: dict) -> Broadcast:
        return cls(bank_from_config(config), Standardisation.from_config(config))

    def apply(self, model: nn.Module) -> nn.Module:
        """Set what this broadcast holds on a freshly built model (which must accept it)."""
        if self.bank is not None:
            model.set_bank(self.bank)
        if self.standardisation is not None:
            model.set_standardisation(self.standardisation)
        return model
