"""omnirad-predict applies a run folder's encoder and adapter to a site's own images and writes what
the model itself outputs for each, whatever form the images come in."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from omnirad.adapters import trainable_state
from omnirad.configure import load_config
from omnirad.data.image_folder import read_image
from omnirad.models import encoder_for, model_inputs, new_model
from omnirad.training import predict
from omnirad_fl.client.predict import main
from omnirad_fl.server.run_folder import RunFolder


def saved_run(tmp_path, keys: dict, seed: int):
    """A run folder as the server leaves it: configuration and adapters (a seeded random model)."""
    cfg = load_config({"run.output-dir": str(tmp_path / "runs"), **keys})
    folder = RunFolder.create(cfg).path
    torch.manual_seed(seed)
    model = new_model(cfg)
    for name in ("best", "final"):
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(folder / f"{name}_adapter.safetensors"))
    return cfg, folder, model


@pytest.fixture
def run(tmp_path):
    return saved_run(tmp_path, {"model.encoder": "vit-tiny", "data.size": 28, "model.adapter": "linear",
                                "data.num-classes": 4}, seed=3)


@pytest.fixture
def segmentation_run(tmp_path):
    return saved_run(tmp_path, {"data.task": "segmentation", "model.adapter": "decoder", "data.size": 32,
                                "data.num-sites": 2}, seed=0)


def rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_predictions_are_the_models_own_outputs_for_a_folder_of_images(tmp_path, run):
    cfg, folder, model = run
    for n in range(6):
        (tmp_path / "scans" / "ward").mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(n).random((40, 40)) * 255).astype(np.uint8)).save(tmp_path / "scans" / "ward" / f"{n}.png")
    out = tmp_path / "predictions.csv"
    assert main(["--run", str(folder), "--input", str(tmp_path / "scans"), "--out", str(out), "--device", "cpu"]) == 0
    written = rows(out)
    assert [r["image"] for r in written] == [f"ward/{n}.png" for n in range(6)]
    pixels = np.stack([read_image(tmp_path / "scans" / "ward" / f"{n}.png", 28) for n in range(6)])
    expected = torch.softmax(predict(model, model_inputs(cfg, encoder_for(cfg), pixels, "test", use_cache=False)), dim=1)
    got = np.array([[float(r[f"p-{name}"]) for name in cfg_names(written)] for r in written])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert [int(r["predicted"]) for r in written] == expected.argmax(dim=1).tolist()
    assert all(r["label"] == "" for r in written)


def cfg_names(written):
    return [key.removeprefix("p-") for key in written[0] if key.startswith("p-")]


def test_an_npz_keeps_its_labels_and_a_csv_names_unreadable_files(tmp_path, run, capsys):
    _, folder, _ = run
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "site.npz", test_images=images, test_labels=np.arange(5).reshape(-1, 1) % 4)
    out = tmp_path / "p.csv"
    assert main(["--run", str(folder), "--input", str(tmp_path / "site.npz"), "--out", str(out), "--adapter", "final"]) == 0
    assert [(r["image"], r["label"]) for r in rows(out)] == [(f"test/{i}", str(i % 4)) for i in range(5)]
    (tmp_path / "broken.png").write_bytes(b"no image")
    (tmp_path / "list.csv").write_text("path,label\nbroken.png,1\nmissing.png,0\n")
    capsys.readouterr()
    assert main(["--run", str(folder), "--input", str(tmp_path / "list.csv"), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "broken.png: could not be read" in err and "missing.png: could not be read" in err
    assert not (tmp_path / "x.csv").exists()
    (tmp_path / "latin-1.csv").write_bytes("path,label\nröntgen.png,1\n".encode("latin-1"))  # a spreadsheet's export
    assert main(["--run", str(folder), "--input", str(tmp_path / "latin-1.csv"), "--out", str(tmp_path / "x.csv")]) == 2
    assert f"{tmp_path / 'latin-1.csv'}:2: not UTF-8 text" in capsys.readouterr().err  # was a UnicodeDecodeError traceback
    assert main(["--run", str(tmp_path), "--input", str(tmp_path / "site.npz")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_volumes_get_a_row_per_slice_and_one_per_volume_with_its_slices_mean(tmp_path, run, capsys):
    import nibabel as nib

    _, folder, _ = run
    for n in range(2):
        values = np.random.default_rng(n).random((10, 12, 3 + n)).astype(np.float32)
        nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / f"v{n}.nii.gz")
    (tmp_path / "held-out.csv").write_text("path,label\nv0.nii.gz,2\nv1.nii.gz,\n")
    out = tmp_path / "predictions.csv"
    assert main(["--run", str(folder), "--input", str(tmp_path / "held-out.csv"), "--out", str(out), "--device", "cpu"]) == 0
    slices, volumes = rows(out), rows(tmp_path / "predictions-volumes.csv")
    assert [r["image"] for r in slices] == [f"v0.nii.gz#{k}" for k in range(3)] + [f"v1.nii.gz#{k}" for k in range(4)]
    assert [(r["volume"], r["label"]) for r in volumes] == [("v0.nii.gz", "2"), ("v1.nii.gz", "")]
    names = cfg_names(slices)
    for volume, members in zip(volumes, (slices[:3], slices[3:]), strict=True):
        mean = np.mean([[float(r[f"p-{name}"]) for name in names] for r in members], axis=0)
        np.testing.assert_allclose([float(volume[f"p-{name}"]) for name in names], mean, atol=1e-5)
    (tmp_path / "bad.csv").write_text("path\nv0.nii.gz\nmissing.nii.gz\n")
    assert main(["--run", str(folder), "--input", str(tmp_path / "bad.csv"), "--out", str(out), "--device", "cpu"]) == 2
    assert "bad.csv: missing.nii.gz: file not found" in capsys.readouterr().err


def test_a_segmentation_run_writes_each_volumes_mask_as_nifti_on_its_own_grid(tmp_path, segmentation_run):
    import nibabel as nib

    cfg, folder, model = segmentation_run
    affine = np.diag([2.0, 1.5, 3.0, 1.0])  # anisotropic voxels, RAS
    values = np.random.default_rng(0).random((32, 32, 5)).astype(np.float32)  # slice plane at data.size: no resize
    nib.save(nib.Nifti1Image(values, affine), tmp_path / "ct.nii.gz")
    out = tmp_path / "masks.csv"
    assert main(["--run", str(folder), "--input", str(tmp_path / "ct.nii.gz"), "--out", str(out), "--device", "cpu"]) == 0
    (row,) = rows(out)
    written = nib.load(tmp_path / row["mask"])
    assert row["volume"] == "ct.nii.gz" and written.shape == (32, 32, 5) and np.allclose(written.affine, affine)
    assert sum(int(row[key]) for key in row if key.startswith("voxels-")) == 32 * 32 * 5
    slices = np.moveaxis(((values - np.percentile(values, 1)) / (np.percentile(values, 99) - np.percentile(values, 1)))
                         .clip(0, 1) * 255, 2, 0).round().astype(np.uint8)
    expected = predict(model, model_inputs(cfg, encoder_for(cfg), slices, "test", use_cache=False)).argmax(dim=1)
    agree = (np.asarray(written.dataobj) == np.moveaxis(expected.numpy(), 0, 2)).mean()
    assert agree > 0.99  # the model's own masks, back on the volume's grid (a rounding step may move a pixel)


def test_a_segmentation_run_writes_a_png_mask_per_2d_image_and_refuses_volumes_without_a_grid(tmp_path, capsys, segmentation_run):
    cfg, folder, model = segmentation_run
    (tmp_path / "scans" / "ward").mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    for name, image in zip(("a.png", "ward/b.png"), pixels, strict=True):
        Image.fromarray(image).save(tmp_path / "scans" / name)
    out = tmp_path / "masks.csv"
    assert main(["--run", str(folder), "--input", str(tmp_path / "scans"), "--out", str(out), "--device", "cpu"]) == 0
    written = rows(out)
    assert [row["image"] for row in written] == ["a.png", "ward/b.png"]
    expected = predict(model, model_inputs(cfg, encoder_for(cfg), pixels, "test", use_cache=False)).argmax(dim=1).numpy()
    for row, mask in zip(written, expected, strict=True):
        saved = np.asarray(Image.open(tmp_path / row["mask"]))
        assert saved.shape == (32, 32) and (saved == mask).all()
        assert sum(int(row[key]) for key in row if key.startswith("pixels-")) == 32 * 32
    np.savez(tmp_path / "nodules3d.npz", test_images=np.zeros((1, 4, 32, 32), np.uint8))
    assert main(["--run", str(folder), "--input", str(tmp_path / "nodules3d.npz"), "--out", str(out), "--device", "cpu"]) == 2
    assert "MedMNIST 3D volumes have no grid" in capsys.readouterr().err


def test_an_exported_bundle_predicts_as_its_run_and_carries_a_metrics_card(tmp_path, run, capsys):
    cfg, folder, _ = run
    summary = {"rounds": 3, "best": {"round": 2, "selected-by": "federated-val macro-f1", "global": {"accuracy": 0.5}},
               "final": {"accuracy": 0.4}, "sites-per-round": {"1": ["0", "1"]}, "final-federated-val": {}}
    (folder / "summary.json").write_text(json.dumps(summary))
    bundle = tmp_path / "bundle"
    assert main(["--run", str(folder), "--export", str(bundle)]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["best_adapter.safetensors", "card.json", "card.md",
                                                         "config.yaml", "encoder.json"]
    card = json.loads((bundle / "card.json").read_text())
    assert card["round"] == 2 and card["test-metrics"] == {"accuracy": 0.5} and card["sites"] == 2
    assert card["encoder"] == {"encoder": "vit-tiny", "weights": "", "sha256": "random-init"}
    assert "| accuracy | 0.5000 |" in (bundle / "card.md").read_text()
    assert main(["--run", str(folder), "--export", str(bundle)]) == 2  # never over a folder already written
    assert "already exists" in capsys.readouterr().err

    np.savez(tmp_path / "scans.npz", test_images=np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    for source, out in ((folder, tmp_path / "from-run.csv"), (bundle, tmp_path / "from-bundle.csv")):
        assert main(["--run", str(source), "--input", str(tmp_path / "scans.npz"), "--out", str(out), "--device", "cpu"]) == 0
    assert rows(tmp_path / "from-run.csv") == rows(tmp_path / "from-bundle.csv")


def test_encoder_weights_other_than_the_runs_are_refused_before_any_image_is_read(tmp_path, run, capsys):
    _, folder, _ = run
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    assert main(["--run", str(folder), "--input", str(tmp_path / "nothing-here"), "--weights",
                 str(tmp_path / "other.safetensors"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "other.safetensors: sha256" in err and "is not the encoder the run trained on" in err


def scans(tmp_path, n=2):
    folder = tmp_path / "scans"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("damage", ["nan", "extra key", "other shape", "truncated"])
def test_a_damaged_or_replaced_adapter_is_refused_by_name_and_nothing_is_written(tmp_path, run, capsys, damage):
    """Issue 32, item 3: an all-NaN adapter used to exit 0 with NaN probabilities and class 0 everywhere;
    a tampered or truncated one ended in a traceback."""
    _, folder, model = run
    adapter = folder / "best_adapter.safetensors"
    state = {k: v.contiguous() for k, v in trainable_state(model).items()}
    key = next(iter(state))
    if damage == "nan":
        save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(adapter))
    elif damage == "extra key":
        save_file({**state, "smuggled": torch.zeros(3)}, str(adapter))
    elif damage == "other shape":
        save_file({**state, key: torch.zeros(7, 3)}, str(adapter))
    else:
        adapter.write_bytes(adapter.read_bytes()[:100])
    out = tmp_path / "predictions.csv"
    assert main(["--run", str(folder), "--input", str(scans(tmp_path)), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(adapter) in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("bad", ["truncated npz", "decompression bomb"])
def test_damaged_input_files_end_in_an_error_naming_them(tmp_path, run, capsys, bad):
    _, folder, _ = run
    if bad == "truncated npz":
        path = tmp_path / "images.npz"
        np.savez_compressed(path, test_images=np.zeros((4, 28, 28), np.uint8), test_labels=np.zeros((4, 1)))
        path.write_bytes(path.read_bytes()[:-60])
    else:
        path = scans(tmp_path, 1)
        Image.new("L", (1, 1)).save(path / "bomb.png")
        data = bytearray((path / "bomb.png").read_bytes())
        data[16:24] = (100_000).to_bytes(4, "big") * 2  # the IHDR header claims 100000 x 100000 pixels
        (path / "bomb.png").write_bytes(bytes(data))
    assert main(["--run", str(folder), "--input", str(path), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert ("images.npz" in err if bad == "truncated npz" else "bomb.png" in err) and "Traceback" not in err
