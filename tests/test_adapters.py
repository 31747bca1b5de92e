import pytest
import torch

from omnirad.adapters import create_head, load_trainable_state, trainable_state
from omnirad.config import ModelConfig
from omnirad.encoders import create_encoder


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_sent_keys_are_exactly_the_trainable_parameters(name):
    adapter = create_head(name, 192, 4, ModelConfig(hidden_dim=32))
    sent = trainable_state(adapter)
    assert list(sent) == [n for n, p in adapter.named_parameters() if p.requires_grad]
    assert sum(t.numel() for t in sent.values()) == sum(p.numel() for p in adapter.parameters())


def test_no_encoder_tensor_is_ever_sent():
    encoder = create_encoder("vit-tiny", "", image_size=32)
    model = torch.nn.Sequential(encoder, create_head("linear", encoder.num_features, 4))
    sent = trainable_state(model)
    assert set(sent) == {"1.fc.weight", "1.fc.bias"}


def test_round_trip_and_mismatches_are_errors():
    a, b = create_head("mlp", 16, 3, ModelConfig(hidden_dim=8)), create_head("mlp", 16, 3, ModelConfig(hidden_dim=8))
    load_trainable_state(b, trainable_state(a))
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
    state = trainable_state(a)
    with pytest.raises(KeyError, match="missing"):
        load_trainable_state(b, {k: v for k, v in state.items() if k != "net.1.bias"})
    with pytest.raises(ValueError, match="shape"):
        load_trainable_state(b, {**state, "net.1.bias": torch.zeros(5)})


def test_unknown_head():
    with pytest.raises(ValueError, match="model.head"):
        create_head("lora", 8, 2)
