"""OmniRad-FL's plain PyTorch library: encoders, adapters, data, local training. No Flower here."""
