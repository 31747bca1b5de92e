"""DINO-style self-distillation: the teacher's EMA, centring and sharpening, radiology views, and a
pretrained encoder that loads through the factory with the same features."""

import numpy as np
import pytest
import torch
from torch import nn

from omnirad.adapters import tensor_bytes
from omnirad.data import synthetic
from omnirad.encoders import create_encoder
from omnirad.ssl import (
    DinoSettings,
    RadiologyViews,
    SelfDistillation,
    learning_rate,
    pretrain,
    save_encoder,
    teacher_momentum,
    teacher_temperature,
)

SMALL = DinoSettings(out_dim=32, hidden_dim=32, bottleneck_dim=8)


class TinyBackbone(nn.Module):
    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_the_teacher_is_an_exponential_moving_average_of_the_student():
    torch.manual_seed(0)
    model = SelfDistillation(TinyBackbone(), SMALL)
    with torch.no_grad():
        for param in model.student.parameters():
            param.add_(torch.randn_like(param))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.update_teacher(0.9)
    for key, student in model.student.state_dict().items():
        torch.testing.assert_close(model.teacher.state_dict()[key], 0.9 * before[key] + 0.1 * student)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996) and teacher_momentum(100, 100, 0.996) == 1.0


def test_schedules_warm_up_then_settle():
    rates = [learning_rate(step, 100, 1e-3, 10) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and max(rates) == pytest.approx(1e-3) == rates[9]
    assert rates[-1] == pytest.approx(1e-4, rel=0.01) and rates == sorted(rates[:10]) + sorted(rates[10:], reverse=True)
    temps = [teacher_temperature(step, 100, SMALL) for step in range(100)]
    assert temps[0] == SMALL.warmup_teacher_temp and temps[30:] == [SMALL.teacher_temp] * 70
    assert SMALL.warmup_teacher_temp < SMALL.teacher_temp < SMALL.student_temp


def test_the_centre_follows_the_teachers_mean_output_and_targets_are_sharper_than_the_student():
    model = SelfDistillation(TinyBackbone(), SMALL)
    outputs = torch.randn(10, SMALL.out_dim)
    model.update_center(outputs)
    torch.testing.assert_close(model.center, 0.1 * outputs.mean(dim=0, keepdim=True))
    model.update_center(outputs)
    torch.testing.assert_close(model.center, (0.09 + 0.1) * outputs.mean(dim=0, keepdim=True))

    logits = torch.randn(4, SMALL.out_dim)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -torch.special.xlogy(p, p).sum(dim=-1)

    sharp = torch.softmax(logits / SMALL.teacher_temp, dim=-1)
    soft = torch.softmax(logits / SMALL.student_temp, dim=-1)
    assert (entropy(sharp) < entropy(soft)).all()


def test_prototype_norms_are_fixed_at_one_so_logits_are_cosines():
    model = SelfDistillation(TinyBackbone(), SMALL)
    prototypes = model.student["head"].prototypes
    torch.testing.assert_close(prototypes.weight.norm(dim=1), torch.ones(SMALL.out_dim))
    assert not prototypes.parametrizations.weight.original0.requires_grad
    logits = model.student["head"](torch.randn(7, 6))
    assert logits.abs().max() <= 1.0 + 1e-5


def test_the_loss_trains_the_student_only_and_moves_the_centre():
    torch.manual_seed(0)
    model = SelfDistillation(TinyBackbone(), SMALL)
    views = [torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)]
    loss = model.loss(views)
    loss.backward()
    assert torch.isfinite(loss) and 0 < loss.item() < 2 * np.log(SMALL.out_dim)
    assert all(p.grad is not None for p in model.student.parameters() if p.requires_grad)
    assert model.center.abs().sum() > 0


def test_views_of_grey_images_stay_grey_and_in_range():
    images = synthetic.generate(6, size=32, seed=0).images
    make_views, generator = RadiologyViews(24, (0.32, 1.0)), torch.Generator().manual_seed(0)
    first, second = make_views(images, generator), make_views(images, generator)
    assert first.shape == (6, 1, 24, 24) and 0 <= first.min() and first.max() <= 1
    assert not torch.equal(first, second)  # two views of the same images differ


def test_a_pretrained_encoder_loads_through_the_factory_with_identical_features(tmp_path):
    images = synthetic.generate(32, size=32, seed=0).images
    state, history = pretrain("vit-tiny", images, image_size=32, epochs=2, batch_size=16, settings=SMALL)
    random_init = create_encoder("vit-tiny", "", 32).vit.state_dict()
    assert len(history) == 2 and all(np.isfinite(history))
    assert any(not torch.equal(state[k], random_init[k]) for k in state)  # pretraining changed the weights
    path = tmp_path / "ssl.safetensors"
    save_encoder(state, str(path))
    loaded = create_encoder("vit-tiny", str(path), 32)
    reference = create_encoder("vit-tiny", "", 32)
    reference.vit.load_state_dict(state)
    batch = torch.from_numpy(images[:8]).unsqueeze(1)
    torch.testing.assert_close(loaded(batch), reference(batch))


# --- masked image modelling and the federated pieces ----------------------------------------------

from omnirad.config import ConfigError, SslConfig  # noqa: E402
from omnirad.configure import load_config  # noqa: E402
from omnirad.ssl import (  # noqa: E402
    CENTER_KEY,
    MaeSettings,
    MaskedAutoencoder,
    SslRound,
    from_wire,
    initial_states,
    new_learner,
    round_momentum,
    site_round,
    teacher_encoder,
    to_wire,
    update_server_teacher,
)

TINY_MAE = MaeSettings(decoder_dim=16, decoder_depth=1, decoder_heads=2)


def test_patchify_follows_the_vits_token_order():
    vit = create_encoder("vit-tiny", "", 32).vit
    mae = MaskedAutoencoder(vit, 32, TINY_MAE)
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    patches = mae.patchify(images)
    assert patches.shape == (2, 16, 3 * 8 * 8)
    torch.testing.assert_close(patches[1, 5].reshape(3, 8, 8), images[1, :, 8:16, 8:16])  # row 1, column 1


def test_mae_loss_is_scored_on_hidden_patches_only_and_trains_encoder_and_decoder():
    torch.manual_seed(0)
    mae = new_learner("mae", create_encoder("vit-tiny", "", 32).vit, 32, TINY_MAE)
    images = torch.randn(4, 3, 32, 32)
    loss = mae.loss([images], torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0.5  # normalised pixels: predicting 0 scores about 1
    assert mae.student["vit"].patch_embed.proj.weight.grad is not None
    assert mae.student["decoder"].pred.weight.grad is not None
    with pytest.raises(ValueError, match="ssl.objective"):
        new_learner("simclr", create_encoder("vit-tiny", "", 32).vit, 32)


def test_the_server_teacher_is_an_ema_of_the_aggregated_student():
    teacher = {"w": torch.zeros(3), "n": torch.tensor(1)}
    student = {"w": torch.ones(3), "n": torch.tensor(5), CENTER_KEY: torch.ones(2)}
    updated = update_server_teacher(teacher, student, 0.75)
    torch.testing.assert_close(updated["w"], torch.full((3,), 0.25))
    assert updated["n"].item() == 5 and CENTER_KEY not in updated
    # per-step momentum compounded over a round's local steps; 1 at the end of the schedule
    assert round_momentum(1, 10, 75, 0.996) == pytest.approx(0.996**75)
    assert round_momentum(1, 10, 75, 0.996) < round_momentum(5, 10, 75, 0.996) < 1.0
    assert round_momentum(11, 10, 75, 0.996) == 1.0


def test_half_precision_transfer_halves_the_bytes_and_comes_back_as_float32():
    state = {"w": torch.randn(10, 10), "i": torch.arange(3)}
    wire = to_wire(state, half=True)
    assert wire["w"].dtype == torch.float16 and wire["i"].dtype == torch.int64
    assert tensor_bytes(wire.values()) == 10 * 10 * 2 + 3 * 8 and to_wire(state, half=False) is state
    back = from_wire(wire)
    assert back["w"].dtype == torch.float32 and torch.allclose(back["w"], state["w"], atol=1e-2)


@pytest.mark.parametrize("objective", ["dino", "mae"])
def test_a_site_round_trains_the_student_and_moves_the_centre(objective):
    images = synthetic.generate(24, size=32, seed=1).images
    settings = SMALL if objective == "dino" else TINY_MAE
    student, teacher = initial_states(objective, "vit-tiny", weights="", image_size=32, seed=0, settings=settings)
    assert (CENTER_KEY in student) == (objective == "dino") and bool(teacher) == (objective == "dino")
    task = SslRound(ssl=SslConfig(objective=objective, local_epochs=1, lr=1e-4, batch_size=12), encoder="vit-tiny",
                    image_size=32, student=student, teacher=teacher, server_round=1, rounds=2, seed=0)
    new, metrics = site_round(task, images, settings)
    assert set(new) == set(student) and metrics["steps"] == 2 and metrics["images"] == 24
    assert np.isfinite(metrics["loss"])
    assert not torch.equal(new["vit.cls_token"], student["vit.cls_token"])
    if objective == "dino":
        assert not torch.equal(new[CENTER_KEY], student[CENTER_KEY])
        assert all(torch.equal(v, teacher[k]) for k, v in teacher.items())  # the received teacher is not changed
    encoder = teacher_encoder(teacher, new)
    create_encoder("vit-tiny", "", 32).vit.load_state_dict(encoder)  # timm names, nothing missing or extra


def test_ssl_keys_are_validated_by_name():
    cfg = load_config({"ssl.rounds": 2, "num-server-rounds": 0, "ssl.objective": "dino"})
    assert cfg.ssl.rounds == 2 and cfg.num_server_rounds == 0
    for bad, key in ((({"ssl.objective": "byol"}), "ssl.objective"), ({"ssl.rounds": -1}, "ssl.rounds"),
                     ({"num-server-rounds": 0, "model.head-init": "random"}, "num-server-rounds"), ({"ssl.save-encoder": "x.pt"}, "ssl.save-encoder"),
                     ({"ssl.lr": 0.0}, "ssl.lr")):
        with pytest.raises(ConfigError, match=key):
            load_config(bad)
