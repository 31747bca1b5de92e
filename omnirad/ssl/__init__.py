"""Self-supervised pretraining of the encoder, centrally or federated (``ssl.rounds``).

``objectives``: the learner interface and the ``SSL_OBJECTIVES`` registry (``dino``, ``mae``);
``views``: augmentations for radiographs; ``schedules``: warm-ups and cosines over a whole
pretraining; ``local``: the shared training loop and central pretraining; ``federated``: a site's
round and the server's teacher. Plain PyTorch, no Flower.
"""

from omnirad.ssl import dino, mae  # noqa: F401 - each module registers its objective
from omnirad.ssl.dino import DinoSettings, SelfDistillation, teacher_temperature
from omnirad.ssl.federated import (
    SslRound,
    from_wire,
    initial_states,
    round_momentum,
    site_round,
    teacher_encoder,
    to_wire,
    update_server_teacher,
)
from omnirad.ssl.local import encoder_state, pretrain, save_encoder, train_locally
from omnirad.ssl.mae import MaeSettings, MaskedAutoencoder
from omnirad.ssl.objectives import CENTER_KEY, SSL_OBJECTIVES, Learner, check_ssl, new_learner
from omnirad.ssl.schedules import Schedule, learning_rate, teacher_momentum
from omnirad.ssl.views import RadiologyViews

__all__ = ["CENTER_KEY", "SSL_OBJECTIVES", "DinoSettings", "Learner", "MaeSettings", "MaskedAutoencoder",
           "RadiologyViews", "Schedule", "SelfDistillation", "SslRound", "check_ssl", "encoder_state", "from_wire",
           "initial_states", "learning_rate", "new_learner", "pretrain", "round_momentum", "save_encoder",
           "site_round", "teacher_encoder", "teacher_momentum", "teacher_temperature", "to_wire",
           "train_locally", "update_server_teacher"]
