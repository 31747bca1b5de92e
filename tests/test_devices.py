"""Devices and precision (``run.device``, ``run.precision``): resolved on the machine that computes,
refused cleanly when absent, bf16 autocast on the CPU, and taken from the configuration by every
path that runs a model. These run on CPU-only machines; what only a GPU shows is in
simulations/studies/bench_device.py and docs/benchmarks.md."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from omnirad import devices
from omnirad.adapters import create_head, trainable_state
from omnirad.config import ConfigError, TrainConfig
from omnirad.configure import load_config
from omnirad.devices import CPU, Placement, resolve_placement
from omnirad.encoders import create_encoder
from omnirad.tasks import MULTI_CLASS, TaskSpec
from omnirad.training import encode, train_model
from omnirad_fl.simulations.flower_local import flwr_run_command

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
         "train.local-epochs": 1, "num-server-rounds": 2}


@pytest.fixture(autouse=True)
def fresh_resolution():
    resolve_placement.cache_clear()
    yield
    resolve_placement.cache_clear()


def test_the_device_key_resolves_on_this_machine():
    assert resolve_placement("cpu", "auto") == CPU
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_placement("auto", "auto").device.type == expected
    assert resolve_placement("cpu", "bf16") == Placement(torch.device("cpu"), "bf16")
    assert load_config({"run.device": "cuda:1", "run.precision": "bf16"}).run.device == "cuda:1"  # checked where it runs
    for key, value in (("run.device", "gpu"), ("run.device", "cuda:x"), ("run.precision", "fp8")):
        with pytest.raises(ConfigError, match=key):
            load_config({key: value})


def test_cuda_is_refused_cleanly_where_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="run.device='cuda', but this machine has no CUDA device"):
        resolve_placement("cuda", "auto")
    with pytest.raises(ConfigError, match="fp16.*needs a GPU"):
        resolve_placement("cpu", "fp16")


def test_bf16_is_refused_on_a_gpu_without_it_and_auto_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an old GPU")
    with pytest.raises(ConfigError, match="an old GPU does not support bfloat16"):
        resolve_placement("cuda", "bf16")
    assert resolve_placement("cuda:1", "auto") == Placement(torch.device("cuda", 1), "fp16")
    with pytest.raises(ConfigError, match="has 2 CUDA devices"):
        resolve_placement("cuda:2", "auto")


def test_bf16_autocast_runs_on_the_cpu_and_hands_back_float32():
    encoder = create_encoder("vit-tiny", "", 32)
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    full = encode(encoder, images)
    mixed = encode(encoder, images, placement=Placement(torch.device("cpu"), "bf16"))
    assert mixed.dtype == torch.float32 and not torch.equal(full, mixed)
    torch.testing.assert_close(mixed, full, atol=0.15, rtol=0.05)  # bf16 keeps about three digits
    head = create_head("linear", full.shape[1], 3)
    stats = train_model(head, full, np.arange(8) % 3, TaskSpec(MULTI_CLASS, ("a", "b", "c")),
                        train=TrainConfig(local_epochs=2, batch_size=4), placement=Placement(torch.device("cpu"), "bf16"))
    assert np.isfinite(stats["train_loss"]) and head.fc.weight.dtype == torch.float32


@dataclass(frozen=True)
class RecordingPlacement(Placement):
    """The CPU, noting every module placed and batch moved: a path that ignores the configured
    placement leaves no trace."""

    placed: list = field(default_factory=list, compare=False)
    moved: list = field(default_factory=list, compare=False)

    def place(self, module):
        self.placed.append(type(module).__name__)
        return module

    def move(self, tensor):
        self.moved.append(tuple(tensor.shape))
        return tensor


@pytest.fixture
def recorder(monkeypatch):
    spy = RecordingPlacement(torch.device("cpu"), "fp32")
    monkeypatch.setattr(devices, "resolve_placement", lambda device, precision: spy)
    return spy


def placed_by(spy: RecordingPlacement, action) -> set[str]:
    spy.placed.clear()
    spy.moved.clear()
    action()
    assert spy.moved, "no batch went through the configured placement"
    return set(spy.placed)


@pytest.mark.parametrize(("keys", "trained"), [
    ({"model.adapter": "mlp"}, "MLPHead"),
    ({"model.adapter": "lora", "model.lora-rank": 2}, "ImageClassifier"),
    ({"data.task": "segmentation", "model.adapter": "decoder"}, "SegmentationDecoder"),
    ({"model.adapter": "linear", "privacy.dp": True}, "LinearHead"),
])
def test_every_training_and_evaluation_path_takes_the_device_from_the_configuration(recorder, keys, trained):
    from omnirad.evaluation import CentralEvaluator
    from omnirad.models import new_model
    from omnirad.site import LocalSite, RoundInputs

    cfg = load_config({**SMALL, **keys})
    site = LocalSite(cfg, 0)
    assert site.placement is recorder
    if keys["model.adapter"] != "lora":  # heads and decoders read what the frozen encoder computes once
        assert placed_by(recorder, lambda: site.train_set.inputs) == {"FrozenEncoder"}
    start = trainable_state(new_model(cfg))
    assert trained in placed_by(recorder, lambda: site.fit(RoundInputs(start, server_round=1)))
    assert trained in placed_by(recorder, lambda: site.evaluate(RoundInputs(start, 0)))
    assert trained in placed_by(recorder, lambda: CentralEvaluator(cfg)(start))


def test_ssl_pretraining_takes_the_sites_device(recorder):
    from omnirad.config import SslConfig
    from omnirad.site import LocalSite
    from omnirad.ssl import SslRound, initial_states, site_round

    cfg = load_config({**SMALL, "ssl.rounds": 1, "ssl.batch-size": 8})
    site = LocalSite(cfg, 0)
    student, teacher = initial_states("mae", "vit-tiny", weights="", image_size=32, seed=0)
    task = SslRound(ssl=SslConfig(objective="mae", batch_size=8), encoder="vit-tiny", image_size=32,
                    student=student, teacher=teacher, server_round=1, rounds=1, seed=0)
    images = site.train_set.data.images[:16]
    assert "MaskedAutoencoder" in placed_by(recorder, lambda: site_round(task, images, placement=site.placement))


def test_the_pooled_reference_trains_on_the_configured_device(recorder):
    from omnirad_fl.simulations import references

    cfg = load_config({**SMALL, "model.adapter": "linear"})
    assert "LinearHead" in placed_by(recorder, lambda: references.pooled(cfg))


def test_simulated_sites_get_a_share_of_the_gpus_through_flowers_backend_resources():
    command = flwr_run_command(devices.__file__, "num-server-rounds=1", 4, gpus_per_site=0.25)
    assert command[-2:] == ["--federation-config", "num-supernodes=4 client-resources-num-gpus=0.25"]
    assert flwr_run_command(devices.__file__, "", 4)[-1] == "num-supernodes=4"


def test_the_run_folder_records_where_each_site_computed(tmp_path, task_identity):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from omnirad.protocol import SITE_INFO
    from omnirad_fl.server.run_folder import RunFolder

    folder = RunFolder.create(load_config({"run.output-dir": str(tmp_path)}))
    sent = Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(2)})}), dst_node_id=5, message_type="train")
    folder.on_sent(1, "train", [sent])
    content = RecordDict({"arrays": ArrayRecord({"w": torch.ones(2)}), "metrics": MetricRecord({"site-id": 3.0}),
                          SITE_INFO: ConfigRecord({"device": "cuda:0", "precision": "bf16"})})
    folder.on_replies(1, "train", [Message(content, reply_to=sent)])
    folder.end_round(1, {})
    summary = folder.finish({"w": torch.ones(2)}, {})
    assert summary["devices"] == {"3": "cuda:0 bf16"}


def test_a_site_file_names_its_own_device(tmp_path):
    from omnirad_fl.client.cli import supernode_command
    from omnirad_fl.client.site_config import SiteConfig, problems

    site = SiteConfig()
    site.device, site.precision = "cuda:1", "bf16"
    assert 'device="cuda:1" precision="bf16"' in " ".join(supernode_command(site))
    site.device = "gpu0"
    assert any("device" in problem and "gpu0" in problem for problem in problems(site, tmp_path / "A.yaml"))


def test_a_module_placed_on_the_cpu_is_the_same_module():
    module = nn.Linear(2, 2)
    assert CPU.place(module) is module and CPU.move(x := torch.ones(2)) is x


def test_a_deployed_site_computes_where_its_site_file_says_never_where_the_server_says(tmp_path):
    from flwr.app import Context, RecordDict

    from omnirad.config import flat_defaults
    from omnirad.protocol import NODE_CACHE_DIR, NODE_DATA_FILE, NODE_DEVICE, NODE_PRECISION, NODE_SITE_ID, NODE_WEIGHTS
    from omnirad_fl.client.deployment import site_of

    run = {**flat_defaults(), "data.dataset": "deployment", "data.num-classes": 3, "run.device": "cuda:3",
           "run.precision": "fp16"}
    node = {NODE_SITE_ID: 0, NODE_DATA_FILE: str(tmp_path / "a.npz"), NODE_WEIGHTS: "", NODE_CACHE_DIR: str(tmp_path)}
    context = Context(run_id=1, node_id=1, node_config={**node, NODE_DEVICE: "cpu", NODE_PRECISION: "bf16"},
                      state=RecordDict(), run_config=run)
    cfg, _ = site_of(context)
    assert (cfg.run.device, cfg.run.precision) == ("cpu", "bf16")
    older = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run)  # no device in its file
    assert (site_of(older)[0].run.device, site_of(older)[0].run.precision) == ("auto", "auto")
