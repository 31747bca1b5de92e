"""Issue 32 (hardening): every bad input ends in a message that names it, before anything starts."""

import json
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.durable import sha256_of
from omnirad.models import kept_at_sites, new_model
from omnirad_fl.client.cli import main as client_main
from omnirad_fl.client.predict import read_adapter, read_input
from omnirad_fl.server import cli
from omnirad_fl.server.checkpoint import MARK, save_checkpoint
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies import build_strategy

SERVER = ["data.num-classes=4", "data.num-sites=2"]


def a_deployed_run_with_a_checkpoint(state, arrays: dict) -> RunFolder:
    cfg = load_config({"run.output-dir": str(state / "runs"), "data.dataset": "deployment", "data.num-classes": 4,
                       "data.num-sites": 2})
    folder = RunFolder.create(cfg)
    save_checkpoint(folder.path, 1, arrays, build_strategy(cfg, folder))
    return folder


def test_resume_from_a_checkpoint_that_fails_its_checks_stops_before_the_server_starts(tmp_path, capsys,
                                                                                     monkeypatch):
    """Item 6: the checks ran in the ServerApp, after the SuperLink started and the sites were
    waited for (strategy.join-timeout, 300 s), and ended in a traceback."""
    def started(*_):
        raise AssertionError("omnirad-server started the SuperLink for a checkpoint it cannot resume from")

    monkeypatch.setattr(cli, "start_link", started)
    state = tmp_path / "state"
    folder = a_deployed_run_with_a_checkpoint(state, {"fc.weight": torch.zeros(4, 192), "fc.bias": torch.zeros(4)})
    mark = json.loads((folder.path / MARK).read_text())
    arrays = folder.path / mark["arrays"]["file"]
    save_file({"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4), "extra": torch.zeros(2)}, arrays)
    mark["arrays"]["sha256"] = sha256_of(arrays)
    (folder.path / MARK).write_text(json.dumps(mark))
    assert cli.main(["--insecure", "--resume", "--state-dir", str(state), *SERVER]) == 2
    err = capsys.readouterr().err
    assert str(arrays) in err and "not a checkpoint of this run's model" in err and "'extra'" in err
    assert "Traceback" not in err

    (folder.path / MARK).write_text("{")  # and a mark that is not JSON
    assert cli.main(["--insecure", "--state-dir", str(state), f"run.resume-from={folder.path}", *SERVER]) == 2
    assert f"{folder.path / MARK} is not valid JSON" in capsys.readouterr().err


def test_resume_with_a_configuration_that_changes_the_run_stops_before_the_server_starts(tmp_path, capsys,
                                                                                        monkeypatch):
    """Item 6, the configuration: a resumed run whose encoder, adapter, classes or sites differ from
    the checkpointed run's started the SuperLink and waited for the sites before the ServerApp
    refused it, naming one key's values. Now omnirad-server names every such key with both values
    and exits 2 first; the keys a resumed run may change (rounds, timeouts) pass."""
    starts = []

    def started(*_):
        starts.append(True)
        raise RuntimeError("the test stops here")

    monkeypatch.setattr(cli, "start_link", started)
    state = tmp_path / "state"
    a_deployed_run_with_a_checkpoint(state, {"fc.weight": torch.zeros(4, 192), "fc.bias": torch.zeros(4)})
    changed = ["model.encoder=radiodino-s16", "model.adapter=mlp", "data.num-classes=5", "data.num-sites=3"]
    assert cli.main(["--insecure", "--resume", "--state-dir", str(state), *changed]) == 2
    err = capsys.readouterr().err
    for line in ("model.encoder: the run has 'vit-tiny', this configuration 'radiodino-s16'",
                 "model.adapter: the run has 'linear', this configuration 'mlp'",
                 "data.num-classes: the run has 4, this configuration 5",
                 "data.num-sites: the run has 2, this configuration 3"):
        assert line in err
    assert "Traceback" not in err and starts == []
    extended = ["num-server-rounds=40", "strategy.join-timeout=10", "strategy.round-timeout=120"]
    assert cli.main(["--insecure", "--resume", "--state-dir", str(state), *SERVER, *extended]) == 1
    assert starts == [True]


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_check_reports_every_problem_at_once(tmp_path, capsys):
    """Item 4: a missing auth-key and a bad server.address hid every data and device problem, and a
    100000x100000 PNG stopped the data check with no file or row, hiding the other bad rows."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    (images / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (images / "large.png").write_bytes(png_claiming(10_000, 10_000))
    rows = ["path,label,split", *(f"images/{i}.png,{i % 2},train" for i in range(4)), "images/bomb.png,0,train",
            "images/large.png,1,train", "images/missing.png,0,train", "images/0.png,7,train"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    site = {"site": {"name": "A", "id": 0}, "server": {"address": "not an address", "insecure": True},
            "auth-key": "", "data": {"file": "labels.csv", "task": "multi-class", "num-classes": 2},
            "encoder": {"name": "vit-tiny"}, "device": "cuda:7"}
    (tmp_path / "A.yaml").write_text(yaml.safe_dump(site))
    assert client_main(["--site", "A", "--config", str(tmp_path / "A.yaml"), "--check"]) == 2
    err = capsys.readouterr().err
    csv = tmp_path / "labels.csv"
    for expected in ("server.address: 'not an address'", "auth-key: missing", f"{csv}:6: bomb.png: its header claims",
                     f"{csv}:7: large.png: its header claims 10000x10000 pixels", f"{csv}:8: missing.png: file not found",
                     f"{csv}:9: label is not a class index", "cuda:7"):
        assert expected in err, expected
    assert "Traceback" not in err


def test_relative_input_paths_reach_the_federated_runs_absolute(tmp_path, monkeypatch):
    """Item 8: the federated runs read relative paths in the SuperLink's folder (exit 700), the
    baselines in the user's: each relative input path is made absolute where omnirad-sim reads it."""
    from flwr.common.config import parse_config_args

    from omnirad_fl.simulations import sim

    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.npz", "b.npz", "test.npz"):
        (data / name).write_bytes(b"")
    (tmp_path / "other-test.npz").write_bytes(b"")
    (data / "exp.yaml").write_text("data:\n  dataset: files\n  site-files: a.npz, b.npz\n  test-file: test.npz\n"
                                   "  num-classes: 3\n  num-sites: 2\n")
    sent = []
    monkeypatch.setattr(sim, "run_simulation", lambda run_config, port: sent.append(run_config))
    for cwd, config, overrides in ((data, Path("exp.yaml"), []), (tmp_path, Path("data/exp.yaml"), []),
                                   (tmp_path, data / "exp.yaml", ["data.test-file=other-test.npz"])):
        monkeypatch.chdir(cwd)
        with pytest.raises(RuntimeError, match="did not finish"):
            sim.run_experiment(config, overrides)
        received = parse_config_args([sent[-1]])  # what `flwr run --run-config` hands the ServerApp
        assert received["data.site-files"] == f"{data / 'a.npz'},{data / 'b.npz'}"
        expected_test = tmp_path / "other-test.npz" if overrides else data / "test.npz"
        assert received["data.test-file"] == str(expected_test)


def test_a_server_test_file_without_a_training_split_is_read_for_its_test_rows(tmp_path):
    """Item 8: the server reads only the test rows of data.test-file, yet a file without a training
    split (or with an empty one) was refused ("no training volumes", "train_images is empty")."""
    from omnirad.data.sources import source_of

    rng = np.random.default_rng(0)
    test_images, test_labels = rng.integers(0, 255, (6, 16, 16), dtype=np.uint8), rng.integers(0, 3, (6, 1))
    np.savez(tmp_path / "only-test.npz", test_images=test_images, test_labels=test_labels)
    np.savez(tmp_path / "empty-train.npz", train_images=np.zeros((0, 16, 16), np.uint8),
             train_labels=np.zeros((0, 1), np.int64), test_images=test_images, test_labels=test_labels)
    for i in range(4):
        Image.fromarray(test_images[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "test.csv").write_text("path,label,split\n" + "".join(f"{i}.png,{i % 3},test\n" for i in range(4)))
    for name, count in (("only-test.npz", 6), ("empty-train.npz", 6), ("test.csv", 4)):
        cfg = load_config({"data.dataset": "files", "data.site-files": "a.npz,b.npz", "data.num-sites": 2,
                           "data.num-classes": 3, "data.size": 28, "data.test-file": str(tmp_path / name)})
        held = source_of("files").test_set(cfg.data)
        assert held is not None and len(held) == count, name


@pytest.mark.parametrize("damage", ["no trained-rounds", "rounds not a list", "ledger of strings", "tensor name",
                                    "ledger missing"])
def test_a_damaged_site_state_header_answers_the_documented_code(tmp_path, damage):
    """Item 9: a site state file of the right version whose header fields or tensor names are
    damaged raised KeyError/ValueError, answered as 1000 (anything else) instead of 1007."""
    from omnirad.protocol import STATE_LOST
    from omnirad.site_state import HEADER, VERSION, SiteState, SiteStateError, SiteStateStore
    from omnirad_fl.client.replies import error_reply

    store = SiteStateStore(tmp_path)
    store.save("run-1", SiteState())
    header = {"version": VERSION, "trained-rounds": [1], "ledger": {"noise": [1.0], "rate": [0.1], "steps": [3]}}
    tensors = {"1/fc.weight": torch.zeros(2)}
    if damage == "no trained-rounds":
        del header["trained-rounds"]
    elif damage == "rounds not a list":
        header["trained-rounds"] = 3
    elif damage == "ledger of strings":
        header["ledger"]["noise"] = ["x"]
    elif damage == "ledger missing":
        del header["ledger"]
    else:
        tensors = {"fc.weight": torch.zeros(2)}  # no round before the '/'
    save_file(tensors, store.path("run-1"), metadata={HEADER: json.dumps(header)})
    with pytest.raises(SiteStateError) as refused:
        store.load("run-1")
    assert error_reply(refused.value).code == STATE_LOST == 1007
    assert str(tmp_path) not in str(refused.value)  # the reply names no path


def test_an_npz_array_claiming_more_bytes_than_it_holds_is_refused_by_its_key(tmp_path):
    """Item 9: a header claiming a terabyte raised a MemoryError naming neither file nor key."""
    import io
    import zipfile

    from omnirad.data.labelled import ReadOptions
    from omnirad.data.npz import DataFileError
    from omnirad.data.site_files import read_npz
    from omnirad.tasks import TaskSpec

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12,)})
    claimed = header.getvalue() + b"\0" * 4  # a terabyte claimed, four bytes held
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train_images.npy", claimed)
        archive.writestr("train_labels.npy", npy(np.zeros((4, 1), np.int64)))
    with pytest.raises(DataFileError, match=rf"{path}: array 'train_images' claims shape \(1000000000000,\)"):
        read_npz(path, TaskSpec("multi-class", ("0", "1")), ReadOptions(28))


def test_an_empty_or_damaged_mask_is_blamed_on_the_mask_not_its_image(tmp_path):
    """Item 9: a zero-byte mask was reported as its image that 'could not be read as a volume'."""
    import nibabel as nib

    from omnirad.data.labelled import ReadOptions
    from omnirad.data.npz import DataFileError
    from omnirad.data.site_files import read_site_file
    from omnirad.data.sources.files import file_task

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), tmp_path / "ct.nii.gz")
    (tmp_path / "empty_mask.nii.gz").write_bytes(b"")
    (tmp_path / "damaged_mask.nii.gz").write_bytes(b"not a NIfTI file at all")
    csv = tmp_path / "volumes.csv"
    csv.write_text("path,mask,split\nct.nii.gz,empty_mask.nii.gz,train\nct.nii.gz,damaged_mask.nii.gz,train\n")
    with pytest.raises(DataFileError) as refused:
        read_site_file(str(csv), file_task("segmentation", 2), ReadOptions(20))
    assert f"{csv}:2: mask empty_mask.nii.gz is empty (0 bytes)" in str(refused.value)
    assert f"{csv}:3: mask damaged_mask.nii.gz could not be read" in str(refused.value)
    assert "ct.nii.gz could not be read" not in str(refused.value)


def test_check_says_which_rows_lie_outside_the_sites_data_folder(tmp_path):
    """Item 9, decided: rows and symbolic links that lead outside the site's data folder are read
    (an export may name a shared image store) and said in --check, with the first such row."""
    from omnirad.data.image_folder import survey_images
    from omnirad.tasks import TaskSpec

    data, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    for folder, name in ((data, "in.png"), (elsewhere, "out.png"), (elsewhere, "linked.png")):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / name)
    (data / "link.png").symlink_to(elsewhere / "linked.png")
    csv = data / "labels.csv"
    csv.write_text("path,label\nin.png,0\n../elsewhere/out.png,1\nlink.png,0\n")
    note = survey_images(csv, TaskSpec("multi-class", ("0", "1")))
    assert f"NOTE: 2 of 3 files lie outside {data}" in note and f"{csv}:3" in note
    csv.write_text("path,label\nin.png,0\n")
    assert "NOTE" not in survey_images(csv, TaskSpec("multi-class", ("0", "1")))


def test_fault_injection_is_refused_by_a_deployed_server_and_by_every_deployed_site(tmp_path):
    """Issue 32, item 2: the simulation-only fault keys cannot make a hospital misbehave."""
    from flwr.app import Context, RecordDict

    from omnirad.config import ConfigError
    from omnirad.protocol import NODE_CACHE_DIR, NODE_DATA_FILE, NODE_SITE_ID, NODE_WEIGHTS
    from omnirad_fl.client.deployment import site_of

    deployed = {"data.dataset": "deployment", "data.num-sites": 2, "data.num-classes": 3}
    for faults in ({"faults.site": 0}, {"faults.site": 1, "faults.kind": "nan"}, {"faults.site": 0, "faults.kind": "crash"}):
        with pytest.raises(ConfigError, match="faults.site.*deployed federation"):
            load_config({**deployed, **faults})  # omnirad-server's check, and the ServerApp's
        site = Context(run_id=1, node_id=7, state=RecordDict(), run_config={**deployed, **faults},
                       node_config={NODE_SITE_ID: 0, NODE_DATA_FILE: str(tmp_path / "a.npz"), NODE_WEIGHTS: "",
                                    NODE_CACHE_DIR: str(tmp_path)})
        with pytest.raises(ConfigError, match="faults.site"):
            site_of(site)  # a server that skipped its checks still meets the site's
    assert load_config({"faults.site": 0}).faults.site == 0  # simulated sites keep it


# One "collect every problem, then report" path (omnirad/problems.py): omnirad-predict names them all.

def test_predict_names_every_problem_of_an_adapter(tmp_path):
    """The adapter check listed the first five differences from the run's model, not all of them."""
    cfg = load_config({"data.num-classes": 4})
    model = new_model(cfg)
    path = tmp_path / "final_adapter.safetensors"
    extra = {f"stray.{i}": torch.zeros(2) for i in range(6)}
    save_file({"fc.bias": torch.full((4,), float("nan")), **extra}, path)
    assert "fc.weight" in trainable_state(model)
    with pytest.raises(DataFileError) as refused:
        read_adapter(path, model, kept_at_sites(cfg, model))
    message = str(refused.value)
    assert str(path) in message and "missing tensor 'fc.weight'" in message and "'fc.bias' holds NaN" in message
    assert all(f"'stray.{i}'" in message for i in range(6))


def test_predict_names_a_missing_volume_and_an_unreadable_one_together(tmp_path):
    """A volume list with a missing file used to stop there: no volume was read, so one that cannot
    be read went unnamed until the missing one was fixed."""
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), tmp_path / "good.nii")
    (tmp_path / "damaged.nii.gz").write_bytes(b"not a NIfTI volume")
    listing = tmp_path / "volumes.csv"
    listing.write_text("path,label\ngood.nii,0\nmissing.nii.gz,1\ndamaged.nii.gz,0\n")
    with pytest.raises(DataFileError) as refused:
        read_input(listing, ReadOptions(28))
    message = str(refused.value)
    assert "2 problem(s)" in message and "missing.nii.gz: file not found" in message
    assert "damaged.nii.gz could not be read as a volume" in message and "good.nii" not in message


def test_every_bad_data_key_is_named_at_once():
    """The data keys' checks raised at the first bad value: a wrong data.size hid the partition,
    alpha and window that were wrong too."""
    with pytest.raises(ConfigError) as refused:
        load_config({"data.size": 10, "data.partition": "x", "data.alpha": 0, "data.window": "nope"})
    message = str(refused.value)
    for named in ("'data.size': 10", "'data.partition': 'x'", "'data.alpha': 0.0", "'data.window': 'nope'"):
        assert named in message
