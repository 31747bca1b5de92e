"""The files of a run folder that outlive the run: what a bundle carries and ``omnirad-predict``
reads back. The server writes them (``omnirad_fl.server.run_folder``), the site's tools read them
(``omnirad_fl.client.predict``, ``omnirad_fl.client.bundle``): their names and format live here,
so neither side imports the other.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from omnirad.broadcast import Broadcast
from omnirad.config.schema import ModelConfig
from omnirad.encoders import weights_fingerprint
from omnirad.standardise import Standardisation

STANDARDISATION_FILE = "feature-standardisation.safetensors"
ENCODER_FILE = "encoder.json"


def encoder_record(model: ModelConfig) -> dict[str, str]:
    """Which encoder the run's adapters were trained on: its name and the fingerprint of its weights
    (the file's SHA-256, or ``random-init``), never the weights themselves."""
    weights = model.weights
    try:
        fingerprint = weights_fingerprint(weights)
    except OSError:  # a file this machine cannot read: the run's own weight checks report it
        fingerprint = ""
    return {"encoder": model.encoder, "weights": Path(weights).name if weights else "", "sha256": fingerprint}


def read_broadcast(folder: Path) -> Broadcast:
    """What a finished run's global model needs besides its adapter tensors (the feature
    standardisation when the run used it; a spectral run's bank is not kept)."""
    path = folder / STANDARDISATION_FILE
    return Broadcast(standardisation=Standardisation.from_arrays(load_file(path)) if path.exists() else None)
