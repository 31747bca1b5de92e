"""Fuzzing the readers of files a site or a server is handed (issue 32): random truncations and byte
flips of small valid files (data files, slice-label files, encoder weights, omnirad-predict's
adapter, checkpoints, site state). Every case must end in the project's own error naming the file, or in
success: never another exception, never a hang (each case runs under a wall-clock alarm).

Each test prints how many cases it tried and how they ended; docs/reliability.md keeps the counts.
Hypothesis runs derandomised (the same cases on every machine) and keeps no example database.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.image_folder import read_image_folder
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import read_npz
from omnirad.data.volumes import read_volume_csv
from omnirad.durable import sha256_of
from omnirad.encoders import ENCODERS, EncoderWeightsError
from omnirad.encoders import _from_file as read_encoder_file
from omnirad.models import kept_at_sites, new_model
from omnirad.site_state import HEADER, VERSION, SiteState, SiteStateError, SiteStateStore
from omnirad.tasks import TaskSpec
from omnirad_fl.client.predict import read_adapter
from omnirad_fl.server.checkpoint import MARK, load_checkpoint, save_checkpoint
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.simulations.dicom_files import write_dicom_series
from omnirad_fl.strategies import build_strategy

pytestmark = pytest.mark.usefixtures("task_identity")
CASE_SECONDS = 10  # a case still running after this is a hang
HEAD = 600  # most formats keep their structure near the start: half the flips land there
THREE_CLASSES = TaskSpec("multi-class", ("0", "1", "2"))
OPTIONS = ReadOptions(28)


class Hang(Exception):
    pass


@contextmanager
def bounded(seconds: float):
    """Raise ``Hang`` in this (the main) thread when the block runs longer than ``seconds``."""
    def alarm(*_):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def mutations(size: int) -> st.SearchStrategy:
    """A truncation (keep the first n bytes) or 1-8 bytes XORed with a non-zero value."""
    position = st.one_of(st.integers(0, min(size, HEAD) - 1), st.integers(0, size - 1))
    return st.one_of(st.tuples(st.just("truncate"), st.integers(0, size - 1)),
                     st.tuples(st.just("flip"), st.lists(st.tuples(position, st.integers(1, 255)), min_size=1,
                                                         max_size=8)))


def mutated(original: bytes, mutation) -> bytes:
    kind, how = mutation
    if kind == "truncate":
        return original[:how]
    data = bytearray(original)
    for where, xor in how:
        data[where] ^= xor
    return bytes(data)


def fuzz(name: str, targets: list[Path], read: Callable[[], object], refused: Callable[[Exception], bool],
         examples: int, capsys, after: Callable[[Path], None] | None = None) -> Counter:
    """Run ``read`` on ``examples`` mutations of the files in ``targets`` (one file per case, put back
    after it); ``after`` may fix up what a file's mutation invalidates (a recorded SHA-256). Returns
    how the cases ended; fails on any other exception or a hang."""
    originals = {path: path.read_bytes() for path in targets}
    outcomes: Counter = Counter()
    started = time.monotonic()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def case(data) -> None:
        target = data.draw(st.sampled_from(targets))
        mutation = data.draw(mutations(len(originals[target])))
        target.write_bytes(mutated(originals[target], mutation))
        if after is not None:
            after(target)
        try:
            with bounded(CASE_SECONDS):
                read()
            outcomes["read"] += 1
        except Hang:
            pytest.fail(f"{name}: a hang on {target.name} {mutation[0]}")
        except Exception as err:  # noqa: BLE001 - what is checked is which kind it is
            assert refused(err), f"{name}: {target.name} {mutation}: {type(err).__name__}: {err}"
            outcomes[type(err).__name__] += 1
        finally:
            for path, content in originals.items():
                path.write_bytes(content)
            if after is not None:
                after(target)

    case()
    with capsys.disabled():
        print(f"\nfuzz {name}: {sum(outcomes.values())} cases in {time.monotonic() - started:.1f} s: "
              + ", ".join(f"{n} {kind}" for kind, n in outcomes.most_common()))
    return outcomes


def naming(*paths: Path, kinds: tuple[type[Exception], ...] = (DataFileError,)) -> Callable[[Exception], bool]:
    """The project's own error (``kinds``) with one of ``paths`` in its message."""
    return lambda err: isinstance(err, kinds) and any(str(p) in str(err) for p in paths)


def test_fuzz_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), "train_labels": rng.integers(0, 3, (6, 1)),
              "test_images": rng.integers(0, 255, (3, 8, 8), dtype=np.uint8), "test_labels": rng.integers(0, 3, (3, 1))}
    plain, packed = tmp_path / "plain.npz", tmp_path / "packed.npz"
    np.savez(plain, **arrays)
    np.savez_compressed(packed, **arrays)
    for path in (plain, packed):
        outcomes = fuzz(f"npz ({path.name})", [path], lambda path=path: read_npz(path, THREE_CLASSES, OPTIONS),
                        naming(path), 120, capsys)
        assert outcomes["DataFileError"] > 0


def test_fuzz_labels_csv_and_images(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "3.jpg", quality=90)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,split,patient\n0.png,0,train,p0\n1.png,1,train,p1\n2.png,2,val,p2\n3.jpg,1,train,p3\n")
    targets = [csv, tmp_path / "0.png", tmp_path / "3.jpg"]
    outcomes = fuzz("labels CSV + PNG/JPEG", targets, lambda: read_image_folder(csv, THREE_CLASSES, OPTIONS),
                    naming(csv), 200, capsys)
    assert outcomes["DataFileError"] > 0


def test_fuzz_nifti_volumes(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for i in range(2):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 3)).astype(np.float32), np.eye(4)), tmp_path / f"v{i}.nii")
    csv = tmp_path / "volumes.csv"
    csv.write_text("path,label,patient\nv0.nii,0,a\nv1.nii,1,b\n")
    outcomes = fuzz("volume CSV + NIfTI", [csv, tmp_path / "v0.nii"],
                    lambda: read_volume_csv(csv, THREE_CLASSES, OPTIONS), naming(csv), 80, capsys)
    assert outcomes["DataFileError"] > 0


def test_fuzz_dicom_series(tmp_path, capsys):
    write_dicom_series(tmp_path / "series", np.random.default_rng(3).uniform(-1000, 1000, (8, 8, 3)))
    csv = tmp_path / "volumes.csv"
    csv.write_text("path,label\nseries,1\n")
    outcomes = fuzz("volume CSV + DICOM", sorted((tmp_path / "series").iterdir())[:2],
                    lambda: read_volume_csv(csv, THREE_CLASSES, OPTIONS), naming(csv), 80, capsys)
    assert outcomes["DataFileError"] > 0


def test_fuzz_slice_labels(tmp_path, capsys):
    """A volume CSV whose rows name per-slice label files (one class index per line, per slice)."""
    rng = np.random.default_rng(4)
    for i in range(2):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 3)).astype(np.float32), np.eye(4)), tmp_path / f"v{i}.nii")
    (tmp_path / "s0.txt").write_text("0\n1\n0\n")
    (tmp_path / "s1.txt").write_text("2\n2\n1\n")
    csv = tmp_path / "volumes.csv"
    csv.write_text("path,label,slice-labels\nv0.nii,,s0.txt\nv1.nii,2,s1.txt\n")
    read_volume_csv(csv, THREE_CLASSES, OPTIONS)  # the valid files read
    outcomes = fuzz("volume CSV + slice labels", [tmp_path / "s0.txt", tmp_path / "s1.txt", csv],
                    lambda: read_volume_csv(csv, THREE_CLASSES, OPTIONS), naming(csv), 120, capsys)
    assert outcomes["DataFileError"] > 0


@pytest.fixture
def one_thread():
    """Building a ViT initialises its weights on every core; two fuzzing processes sharing two cores
    then spend most of each case waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_fuzz_encoder_weights(tmp_path, capsys, one_thread, suffix):
    """Encoder weights (model.weights) as omnirad.encoders reads them into vit-tiny's architecture,
    made shallow and narrow here (two blocks of width 48) so that a case takes milliseconds."""
    spec = ENCODERS["vit-tiny"]
    shape = dict(num_classes=0, img_size=32, patch_size=spec.patch_size, dynamic_img_size=True, depth=2, embed_dim=48,
                 num_heads=2)
    state = timm.create_model(spec.timm_name, pretrained=False, **shape).state_dict()
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    read_encoder_file(spec, path, shape)  # the valid file loads
    outcomes = fuzz(f"encoder weights ({suffix})", [path], lambda: read_encoder_file(spec, path, shape),
                    naming(path, kinds=(EncoderWeightsError,)), 80, capsys)
    assert outcomes["EncoderWeightsError"] > 0


def test_fuzz_predict_adapter(tmp_path, capsys):
    """The adapter omnirad-predict applies (``<run>/<name>_adapter.safetensors``), checked against the
    run's model before use."""
    cfg = load_config({"data.num-classes": 4})
    model = new_model(cfg)
    kept = kept_at_sites(cfg, model)
    path = tmp_path / "final_adapter.safetensors"
    save_file({k: v.contiguous() for k, v in trainable_state(model).items() if k not in kept}, path)
    read_adapter(path, model, kept)  # the valid file reads
    outcomes = fuzz("omnirad-predict adapter", [path], lambda: read_adapter(path, model, kept), naming(path), 120,
                    capsys)
    assert outcomes["DataFileError"] > 0


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": "fedadam"})
    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, folder)
    state = {"fc.weight": torch.zeros(4, 192), "fc.bias": torch.zeros(4)}
    save_checkpoint(folder.path, 1, state, strategy)
    load_checkpoint(folder.path)  # the valid file reads
    return folder.path


def test_fuzz_checkpoint_json(checkpoint, capsys):
    outcomes = fuzz("checkpoint.json", [checkpoint / MARK], lambda: load_checkpoint(checkpoint),
                    naming(checkpoint, kinds=(ConfigError, FileNotFoundError)), 150, capsys)
    assert outcomes["ConfigError"] > 0


def test_fuzz_checkpoint_safetensors(checkpoint, capsys):
    """The tensor files rewritten with their SHA-256 (as whoever can write the folder could): what
    safetensors and the model check make of the bytes."""
    mark = json.loads((checkpoint / MARK).read_text())
    part_of = {mark["arrays"]["file"]: "arrays", mark["strategy-state"]["file"]: "strategy-state"}

    def record_sha256(path: Path) -> None:
        current = json.loads((checkpoint / MARK).read_text())
        current[part_of[path.name]]["sha256"] = sha256_of(path)
        (checkpoint / MARK).write_text(json.dumps(current))

    outcomes = fuzz("checkpoint safetensors", [checkpoint / name for name in part_of], lambda: load_checkpoint(checkpoint),
                    naming(checkpoint, kinds=(ConfigError,)), 150, capsys, after=record_sha256)
    assert outcomes["ConfigError"] > 0


def test_fuzz_site_state(tmp_path, capsys):
    """A site's state file: its error goes back to the server, so it names no path (the site's log does)."""
    store = SiteStateStore(tmp_path)
    state = SiteState([1, 2])
    state.personal = {2: {"fc.weight": torch.ones(4, 8)}}
    store.save("run-1", state)
    outcomes = fuzz("site state", [store.path("run-1")], lambda: store.load("run-1"),
                    lambda err: isinstance(err, SiteStateError), 150, capsys)
    assert outcomes["SiteStateError"] > 0


def test_fuzz_site_state_header_fields(tmp_path, capsys):
    """Damage that keeps the file valid safetensors: random JSON in the header's fields."""
    store = SiteStateStore(tmp_path)
    path = store.path("run-1")
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
    outcomes: Counter = Counter()

    @settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(rounds=values, ledger=values, name=st.sampled_from(["1/fc.weight", "fc.weight", "x/y", "2/a/b"]))
    def case(rounds, ledger, name) -> None:
        header = {"version": VERSION, "trained-rounds": rounds, "ledger": ledger}
        save_file({name: torch.zeros(2)}, path, metadata={HEADER: json.dumps(header)})
        try:
            with bounded(CASE_SECONDS):
                store.load("run-1")
            outcomes["read"] += 1
        except SiteStateError:
            outcomes["SiteStateError"] += 1

    case()
    with capsys.disabled():
        print(f"\nfuzz site state header fields: {sum(outcomes.values())} cases: "
              + ", ".join(f"{n} {kind}" for kind, n in outcomes.most_common()))
    assert outcomes["SiteStateError"] > 0
