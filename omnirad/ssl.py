"""Self-supervised pretraining of the encoder: DINO-style self-distillation as OmniRad reports it.

A student (the ViT and a projection head) learns to match an exponential-moving-average teacher
across two global crops of the same image (OmniRad uses global crops only, no local crops); the
teacher's outputs are centred (a running mean subtracted, which keeps one prototype from taking
every image) and sharpened (a lower temperature than the student's), which together keep the
pair from collapsing. The teacher's ViT is the pretrained encoder.

Views suit radiographs: random resized crops, flips, blur and grey-level changes (contrast,
brightness, gamma), no colour jitter or solarisation. Plain PyTorch; the federated version
(sites train students, the server keeps the teacher) builds on ``SelfDistillation``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import Block
from torch import nn
from torchvision.transforms import v2

from omnirad.encoders import create_encoder, encoder_input


@dataclass(frozen=True)
class DinoSettings:
    out_dim: int = 1024  # prototypes (DINOv2 uses 65,536 for millions of images)
    hidden_dim: int = 1024
    bottleneck_dim: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # lower than the student's: the teacher's targets are sharper
    warmup_teacher_temp: float = 0.04  # DINO starts sharper and warms up to teacher_temp
    warmup_fraction: float = 0.3  # of all steps: teacher-temperature warm-up (the learning rate warms up over 10 %)
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # EMA at the start; it rises to 1 along a cosine
    crop_scale: tuple[float, float] = (0.32, 1.0)


class ProjectionHead(nn.Module):
    """MLP to a bottleneck, L2-normalised, then a weight-normalised layer onto the prototypes."""

    def __init__(self, in_dim: int, s: DinoSettings) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, s.hidden_dim), nn.GELU(), nn.Linear(s.hidden_dim, s.hidden_dim),
                                 nn.GELU(), nn.Linear(s.hidden_dim, s.bottleneck_dim))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(s.bottleneck_dim, s.out_dim, bias=False))
        # DINO fixes the prototypes' norms at 1, so logits are cosines in [-1, 1]: left at their
        # initial ~0.2 the teacher's targets were near uniform (entropy 6.69 of ln 1024 = 6.93)
        magnitude = self.prototypes.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.prototypes(nn.functional.normalize(self.mlp(features), dim=-1))


class SelfDistillation(nn.Module):
    """Student and EMA teacher (ViT + head each), the teacher's centre, and the loss."""

    def __init__(self, vit: nn.Module, settings: DinoSettings = DinoSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.student = nn.ModuleDict({"vit": vit, "head": ProjectionHead(int(vit.num_features), settings)})
        self.teacher = copy.deepcopy(self.student)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, settings.out_dim))

    def loss(self, views: list[torch.Tensor], teacher_temp: float | None = None) -> torch.Tensor:
        """Cross-entropy of the student's view against the teacher's other views, averaged over
        pairs; updates the centre with this batch's teacher outputs."""
        s = self.settings
        temp = s.teacher_temp if teacher_temp is None else teacher_temp
        student = [self.student["head"](self.student["vit"](v)) / s.student_temp for v in views]
        with torch.no_grad():
            teacher_out = [self.teacher["head"](self.teacher["vit"](v)) for v in views]
            targets = [torch.softmax((t - self.center) / temp, dim=-1) for t in teacher_out]
        pairs = [(i, j) for i in range(len(views)) for j in range(len(views)) if i != j]
        total = sum(-(targets[i] * torch.log_softmax(student[j], dim=-1)).sum(dim=-1).mean() for i, j in pairs)
        self.update_center(torch.cat(teacher_out))
        return total / len(pairs)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        m = self.settings.center_momentum
        self.center.mul_(m).add_(teacher_out.mean(dim=0, keepdim=True), alpha=1 - m)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, tensor by tensor."""
        for t, s in zip(self.teacher.state_dict().values(), self.student.state_dict().values(), strict=True):
            if t.dtype.is_floating_point:
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


@dataclass(frozen=True)
class MaeSettings:
    mask_ratio: float = 0.75  # share of patches hidden from the encoder
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    crop_scale: tuple[float, float] = (0.5, 1.0)


class PixelDecoder(nn.Module):
    """A light transformer that fills the masked patches back in from the visible ones."""

    def __init__(self, in_dim: int, num_patches: int, patch_pixels: int, s: MaeSettings) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches, s.decoder_dim))
        self.blocks = nn.Sequential(*[Block(s.decoder_dim, s.decoder_heads) for _ in range(s.decoder_depth)])
        self.norm = nn.LayerNorm(s.decoder_dim)
        self.pred = nn.Linear(s.decoder_dim, patch_pixels)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Predicted pixels of every patch (B, N, patch_pixels) from the visible tokens at ``keep``."""
        tokens = self.mask_token.expand(len(visible), num_patches, -1).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]), self.embed(visible))
        return self.pred(self.norm(self.blocks(tokens + self.pos_embed)))


class MaskedAutoencoder(nn.Module):
    """MAE-style masked image modelling: the ViT sees a random quarter of the patches and a light
    decoder predicts the pixels of the rest, each patch normalised to zero mean and unit variance
    (MAE's normalised-pixel loss, which keeps the model from spending itself on brightness)."""

    def __init__(self, vit: nn.Module, input_size: int, settings: MaeSettings = MaeSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.patch = int(vit.patch_embed.patch_size[0])
        self.num_patches = (input_size // self.patch) ** 2
        decoder = PixelDecoder(int(vit.num_features), self.num_patches, 3 * self.patch**2, settings)
        self.student = nn.ModuleDict({"vit": vit, "decoder": decoder})

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) to (B, N, C*p*p), patches in row-major order as the ViT's tokens."""
        p = self.patch
        b, c, h, w = images.shape
        return images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)

    def loss(self, views: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error on the masked patches of each view (normalised pixels)."""
        return sum(self._view_loss(v, generator) for v in views) / len(views)

    def _view_loss(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vit, n = self.student["vit"], self.num_patches
        tokens = vit._pos_embed(vit.patch_embed(images))  # timm's own embedding, class token first
        prefix = int(vit.num_prefix_tokens)
        num_keep = max(1, round(n * (1 - self.settings.mask_ratio)))
        keep = torch.rand(len(images), n, generator=generator).argsort(dim=1)[:, :num_keep].to(images.device)
        patches = tokens[:, prefix:].gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        encoded = vit.norm(vit.blocks(vit.norm_pre(torch.cat([tokens[:, :prefix], patches], dim=1))))
        predicted = self.student["decoder"](encoded[:, prefix:], keep, n)
        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(len(images), n, device=images.device).scatter_(1, keep, 0.0)
        return (((predicted - target) ** 2).mean(-1) * masked).sum() / masked.sum()


def teacher_momentum(step: int, total_steps: int, start: float) -> float:
    """DINO's schedule: from ``start`` to 1 along a half cosine."""
    return 1 - (1 - start) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak``, then a half cosine down to a tenth of it."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (0.1 + 0.9 * (math.cos(math.pi * progress) + 1) / 2)


def teacher_temperature(step: int, total_steps: int, s: DinoSettings) -> float:
    """From ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up, then constant."""
    warmup = max(1, int(s.warmup_fraction * total_steps))
    return s.teacher_temp if step >= warmup else s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * step / warmup


class RadiologyViews:
    """Random global crops of grey-scale or RGB images (uint8, N x H x W[ x C]) as floats in [0, 1],
    with flips, blur and grey-level changes only."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.geometry = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(),
                                    v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.5)])

    def __call__(self, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        views = torch.stack([self.geometry(image) for image in pixels])
        count = len(views)
        contrast = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, generator=generator)
        brightness = 0.2 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
        gamma = torch.exp(0.5 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5))
        mean = views.mean(dim=(1, 2, 3), keepdim=True)
        views = ((views - mean) * contrast + mean + brightness).clamp(0, 1)
        return views.pow(gamma)


OBJECTIVES = ("dino", "mae")


def new_learner(objective: str, vit: nn.Module, input_size: int, dino: DinoSettings = DinoSettings(),
                mae: MaeSettings = MaeSettings()) -> SelfDistillation | MaskedAutoencoder:
    """The objective's model around a trainable copy of ``vit``; every participant builds the same
    initial heads because the caller seeds torch first."""
    vit = copy.deepcopy(vit)
    for param in vit.parameters():
        param.requires_grad_(True)
    if objective == "dino":
        return SelfDistillation(vit, dino)
    if objective == "mae":
        return MaskedAutoencoder(vit, input_size, mae)
    raise ValueError(f"ssl.objective: unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class Schedule:
    """Where a stretch of local training sits in the whole pretraining, so that warm-ups and
    cosines run once over all rounds rather than restarting in each."""

    start_step: int
    total_steps: int
    peak_lr: float

    @property
    def warmup_steps(self) -> int:
        return max(1, int(0.1 * self.total_steps))


def train_locally(learner: SelfDistillation | MaskedAutoencoder, images: np.ndarray, input_size: int,
                  mean: torch.Tensor, std: torch.Tensor, epochs: int, batch_size: int, schedule: Schedule,
                  seed: int) -> dict[str, float]:
    """``epochs`` passes over ``images`` (labels never used); a DINO teacher follows the student
    by EMA step by step. Returns the mean loss, the steps taken and the images seen."""
    generator = torch.Generator().manual_seed(seed)
    dino = isinstance(learner, SelfDistillation)
    crop_scale = learner.settings.crop_scale
    views = RadiologyViews(input_size, crop_scale)
    params = [p for p in learner.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.peak_lr, weight_decay=0.04 if dino else 0.05,
                                  betas=(0.9, 0.999) if dino else (0.9, 0.95))
    learner.train()
    step, losses, seen = schedule.start_step, [], 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        for begin in range(0, len(images), batch_size):
            batch = images[order[begin : begin + batch_size]]
            crops = [encoder_input(views(batch, generator), mean, std, input_size) for _ in range(2 if dino else 1)]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, schedule.total_steps, schedule.peak_lr, schedule.warmup_steps)
            if dino:
                loss = learner.loss(crops, teacher_temperature(step, schedule.total_steps, learner.settings))
            else:
                loss = learner.loss(crops, generator)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 3.0)
            optimizer.step()
            step += 1
            if dino:
                learner.update_teacher(teacher_momentum(step, schedule.total_steps, learner.settings.teacher_momentum))
            losses.append(loss.item())
            seen += len(batch)
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": step - schedule.start_step,
            "images": seen}


def encoder_state(learner: SelfDistillation | MaskedAutoencoder) -> dict[str, torch.Tensor]:
    """The pretrained ViT in timm's names: DINO's teacher, MAE's (only) encoder."""
    vit = learner.teacher["vit"] if isinstance(learner, SelfDistillation) else learner.student["vit"]
    return {k: v.detach().clone().contiguous() for k, v in vit.state_dict().items()}


def pretrain(encoder_name: str, images: np.ndarray, image_size: int, epochs: int, batch_size: int = 32,
             lr: float = 5e-5, seed: int = 0, weights: str = "", settings: DinoSettings = DinoSettings(),
             objective: str = "dino", mae: MaeSettings = MaeSettings()) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Pretrain the encoder on unlabelled pooled images; returns the pretrained ViT's weights (timm
    names, loadable by ``create_encoder``) and the mean loss of each epoch."""
    torch.manual_seed(seed)
    frozen = create_encoder(encoder_name, weights, image_size)
    learner = new_learner(objective, frozen.vit, frozen.input_size, settings, mae)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    history = []
    for epoch in range(epochs):
        schedule = Schedule(epoch * steps_per_epoch, epochs * steps_per_epoch, lr)
        result = train_locally(learner, images, frozen.input_size, frozen.mean, frozen.std, 1, batch_size, schedule,
                               seed * 100_003 + epoch)
        history.append(result["loss"])
    return encoder_state(learner), history


def save_encoder(state: dict[str, torch.Tensor], path: str) -> None:
    """A plain timm safetensors file, as published weights come: set ``model.weights`` to it."""
    save_file(state, path)


# --- the federated version: what a site runs in one round, and what the server keeps -------------

CENTER_KEY = "center"  # the DINO centre travels with the student's tensors and is averaged with them
PRETRAINED_KEY = "ssl-encoder"  # simulation: the pretrained file's path, in the adapter phase's instructions


def initial_states(objective: str, encoder_name: str, weights: str, image_size: int, seed: int,
                   dino: DinoSettings = DinoSettings(), mae: MaeSettings = MaeSettings()
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The server's starting student (ViT + head or decoder, and the DINO centre) and teacher
    (empty for MAE, which has none)."""
    torch.manual_seed(seed)
    frozen = create_encoder(encoder_name, weights, image_size)
    learner = new_learner(objective, frozen.vit, frozen.input_size, dino, mae)
    student = {k: v.detach().clone() for k, v in learner.student.state_dict().items()}
    if isinstance(learner, SelfDistillation):
        student[CENTER_KEY] = learner.center.detach().clone()
        return student, {k: v.detach().clone() for k, v in learner.teacher.state_dict().items()}
    return student, {}


def site_round(objective: str, encoder_name: str, image_size: int, student: dict[str, torch.Tensor],
               teacher: dict[str, torch.Tensor], images: np.ndarray, epochs: int, lr: float, batch_size: int,
               server_round: int, rounds: int, seed: int, dino: DinoSettings = DinoSettings(),
               mae: MaeSettings = MaeSettings()) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One site's share of a federated pretraining round: load the received student, teacher and
    centre, train the student on the site's own images for ``epochs``, and return the new student
    (with its centre) and scalar metrics. The learning-rate, teacher-temperature and momentum
    schedules run over all ``rounds`` (this site's step position is ``(server_round - 1)`` rounds of
    its own steps), so the federation follows one schedule rather than restarting it each round.
    Within the round the site's teacher copy follows its student by EMA and is then dropped: the
    server keeps the federation's teacher."""
    frozen = create_encoder(encoder_name, "", image_size)  # the architecture only: weights come in the message
    learner = new_learner(objective, frozen.vit, frozen.input_size, dino, mae)
    state = dict(student)
    center = state.pop(CENTER_KEY, None)
    learner.student.load_state_dict(state)
    if isinstance(learner, SelfDistillation):
        learner.teacher.load_state_dict(teacher)
        if center is None:
            raise ValueError(f"ssl: a DINO student arrives with its '{CENTER_KEY}' tensor; it has none")
        learner.center.copy_(center)
    steps_per_round = epochs * math.ceil(len(images) / batch_size)
    schedule = Schedule((server_round - 1) * steps_per_round, rounds * steps_per_round, lr)
    metrics = train_locally(learner, images, frozen.input_size, frozen.mean, frozen.std, epochs, batch_size, schedule,
                            seed * 1_000_003 + server_round)
    new_student = {k: v.detach().clone() for k, v in learner.student.state_dict().items()}
    if isinstance(learner, SelfDistillation):
        new_student[CENTER_KEY] = learner.center.detach().clone()
    return new_student, metrics


def round_momentum(server_round: int, rounds: int, local_steps: float, start: float) -> float:
    """The server's teacher momentum for a round: DINO's per-step momentum at this point of the
    schedule, compounded over the round's local steps, so the teacher trails the federation's
    student by as many steps as it would trail a central student (0.996 per step over 75 local
    steps is 0.74 per round)."""
    per_step = teacher_momentum(server_round - 1, rounds, start)
    return float(per_step ** max(1.0, local_steps))


@torch.no_grad()
def update_server_teacher(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
                          momentum: float) -> dict[str, torch.Tensor]:
    """teacher <- momentum * teacher + (1 - momentum) * aggregated student (ViT and head; the
    centre is not part of the teacher). Integer buffers are taken from the student."""
    out = {}
    for key, value in teacher.items():
        new = student[key].to(value.dtype)
        out[key] = value * momentum + new * (1 - momentum) if value.dtype.is_floating_point else new.clone()
    return out


def to_wire(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """What is sent: float32 tensors as float16 when ``half`` (half the bytes), the rest unchanged."""
    if not half:
        return state
    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}


def from_wire(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Received tensors back in float32 for training and averaging."""
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def teacher_encoder(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], objective: str
                    ) -> dict[str, torch.Tensor]:
    """The pretrained ViT in timm names: the teacher's for DINO, the aggregated student's for MAE."""
    source = teacher if objective == "dino" else student
    return {k.removeprefix("vit."): v.detach().clone().contiguous() for k, v in source.items() if k.startswith("vit.")}
