"""omnirad-export: a finished run's model loads with timm's and peft's own calls and runs with
MONAI's bundle runner, no OmniRad-FL import in the loading code, and predicts what omnirad-predict
predicts, to 1e-5."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from monai.bundle.scripts import run as monai_bundle_run
from PIL import Image

from omnirad.data.sources.files import read_options
from omnirad_fl.client import export, predict

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "data.partition": "iid",
         "train.local-epochs": 1, "num-server-rounds": 1}


def images_file(tmp_path):
    """A MedMNIST-format file of new images, as a site would predict on."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (12, 32, 32)).astype(np.uint8)
    path = tmp_path / "new.npz"
    np.savez(path, test_images=images)
    return path, images


def predicted_by_omnirad(tmp_path, run, images):
    out = tmp_path / "predictions.csv"
    assert predict.main(["--run", str(run), "--input", str(images), "--out", str(out), "--device", "cpu"]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(v) for k, v in row.items() if k.startswith("p-")] for row in rows])


def timm_probabilities(model, pixels: np.ndarray) -> np.ndarray:
    """What a timm user writes, from config.json alone: the two lines of the model card."""
    cfg = model.pretrained_cfg
    x = torch.from_numpy(pixels).float().div(255)[:, None].expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=cfg["input_size"][1:], mode="bilinear", align_corners=False)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).softmax(dim=1).numpy()


@pytest.mark.parametrize("extra", [{}, {"model.standardise-features": True}], ids=["linear", "standardised-linear"])
def test_a_linear_head_run_loads_in_timm_and_predicts_as_omnirad_predict(tmp_path, run_in_process, extra):
    run = run_in_process(2, {**SMALL, **extra})
    out = tmp_path / "exported"
    assert export.main([str(run), str(out)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == ["head", "chest", "abdomen", "pelvis"] and config["num_classes"] == 4
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    path, pixels = images_file(tmp_path)
    ours = predicted_by_omnirad(tmp_path, run, path)
    np.testing.assert_allclose(timm_probabilities(model, pixels), ours, atol=1e-5)
    assert not (out / "peft").exists()

    card = (out / "README.md").read_text()
    encoder = json.loads((run / "encoder.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert encoder["sha256"] in card and "library_name: timm" in card
    accuracy = summary["shipped"]["global"]["accuracy"]
    assert f"| accuracy | {accuracy:.4f} |" in card and "held-out test split (40 images)" in card
    # the project's own bundle is there too, and omnirad-predict reads it as it reads the run
    np.testing.assert_allclose(predicted_by_omnirad(tmp_path, out / "bundle", path), ours, atol=1e-6)


def test_a_lora_run_loads_with_peft_on_the_timm_encoder(tmp_path, run_in_process):
    from peft import PeftModel

    run = run_in_process(2, {**SMALL, "data.num-train": 96, "model.adapter": "lora", "model.lora-rank": 4})
    out = tmp_path / "exported"
    assert export.main([str(run), str(out)]) == 0
    adapter_config = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert (out / "peft" / "adapter_model.safetensors").is_file()

    base = timm.create_model(f"local-dir:{out}/peft/base", pretrained=True)
    adapted = PeftModel.from_pretrained(base, str(out / "peft")).eval()
    path, pixels = images_file(tmp_path)
    ours = predicted_by_omnirad(tmp_path, run, path)
    np.testing.assert_allclose(timm_probabilities(adapted, pixels), ours, atol=1e-5)
    # without the adapter the base alone predicts otherwise: the LoRA update is what was loaded
    with adapted.disable_adapter():
        assert np.abs(timm_probabilities(adapted, pixels) - ours).max() > 1e-5
    merged = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # LoRA merged into the timm weights
    np.testing.assert_allclose(timm_probabilities(merged, pixels), ours, atol=1e-5)
    by_monai, by_omnirad = monai_and_omnirad_probabilities(tmp_path, run, out / "monai")  # merged weights, MONAI's runner
    for name, probabilities in by_omnirad.items():
        np.testing.assert_allclose(by_monai[name], probabilities, atol=1e-5, err_msg=name)


def test_an_mlp_head_is_not_forced_into_timm(tmp_path, run_in_process):
    run = run_in_process(2, {**SMALL, "model.adapter": "mlp"})
    out = tmp_path / "exported"
    written = export.export_run(run, out)
    assert written["timm"].startswith("not written: the MLPHead head is not a linear layer")
    assert not (out / "config.json").exists() and (out / "bundle" / "best_adapter.safetensors").is_file()
    assert written["monai"].startswith("not written: the MONAI bundle's network is the timm model")
    assert not (out / "monai").exists()
    assert "Not exported as timm" in (out / "README.md").read_text()
    assert export.main([str(run), str(out)]) == 2  # the folder exists: nothing is overwritten



def write_pngs(folder: Path) -> list[str]:
    """New images as a site holds them: grey and colour, 16-bit, sizes other than the run's, a sub-folder."""
    rng = np.random.default_rng(11)
    (folder / "more").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 28), dtype=np.uint8)).save(folder / "grey-40x28.png")
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / "grey-28.png")
    Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).save(folder / "more" / "colour-20x50.png")
    Image.fromarray(rng.integers(0, 65536, (36, 36), dtype=np.uint16)).save(folder / "wide-16bit.png")
    return ["grey-28.png", "grey-40x28.png", "more/colour-20x50.png", "wide-16bit.png"]


def monai_and_omnirad_probabilities(tmp_path: Path, run: Path,
                                    bundle: Path) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Each image's probabilities from MONAI's runner on the bundle (the CSV its CSVSaver wrote) and
    from omnirad-predict's own functions (before its CSV rounds them to 6 decimals), by image name."""
    images, out = tmp_path / "scans", tmp_path / "monai-predictions"
    names = write_pngs(images)
    # what `python -m monai.bundle run --config_file ... --meta_file ... --bundle_root ... --input_dir ...
    # --output_dir ...` calls; in this process, which has torch, timm and MONAI imported already
    monai_bundle_run(config_file=str(bundle / "configs" / "inference.json"),
                     meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle),
                     input_dir=str(images), output_dir=str(out))
    with (out / "predictions.csv").open() as handle:
        theirs = {Path(row[0]).relative_to(images).as_posix(): [float(p) for p in row[1:]] for row in csv.reader(handle)}
    cfg = predict.run_config(run, None, "cpu")
    found = predict.read_input(images, read_options(cfg.data))
    ours = dict(zip(found.names, predict.predict_images(cfg, run, "best", found), strict=True))
    assert sorted(theirs) == sorted(ours) == names
    return theirs, ours


def test_the_monai_bundle_runs_with_monai_bundle_run_and_predicts_as_omnirad_predict(tmp_path, run_in_process):
    run = run_in_process(2, {**SMALL, "data.size": 28})  # read at 28 px, resized to the encoder's 32 (patch 8)
    out = tmp_path / "exported"
    assert export.main([str(run), str(out)]) == 0
    bundle = out / "monai"
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    outputs = metadata["network_data_format"]["outputs"]["pred"]
    assert outputs["channel_def"] == {"0": "head", "1": "chest", "2": "abdomen", "3": "pelvis"}
    assert metadata["preprocessing"]["size"]["read_size"] == [28, 28]
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    config = (bundle / "configs" / "inference.json").read_text()
    assert "omnirad" not in config  # what MONAI's runner executes: timm, MONAI, torch, Pillow, numpy
    assert "monai.bundle run" in (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run" in (out / "README.md").read_text()  # the model card says how to run it

    theirs, ours = monai_and_omnirad_probabilities(tmp_path, run, bundle)
    for name, probabilities in ours.items():
        np.testing.assert_allclose(theirs[name], probabilities, atol=1e-5, err_msg=name)
