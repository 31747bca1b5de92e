"""Lay out a deployed federation on one machine, to try ``omnirad-server`` and ``omnirad-client``
without hospital data: a MedMNIST-format file per site (a non-IID share of the embedded dataset),
the server's test file, an encoder weights file (vit-tiny, seeded random init: the real loading
and fingerprint checks run on it), a site file per site and the run's configuration. Each site
then makes its own key pair (``omnirad-client --site A --keygen``, in demo/) and the coordinator
registers the public keys alone (``omnirad-certs demo/certs --site A=sites/A.pub ...``).

    omnirad-certs demo/certs --publisher demo-coordinator
    python -m omnirad_fl.simulations.deploy_demo demo --sites A B C
    python -m omnirad_fl.simulations.deploy_demo demo --sites A B C --tasks region region lesions   # multi-task

With ``--tasks`` each site holds one task of the embedded data (body region, finding, lesion
masks in MedSegBench's layout, or captions as a ROCOv2-style CSV with PNG images, whose vocabulary
the run counts at its sites) and names it in its site file (``data.task-name``); the run has
``multitask.site-tasks: declared`` and no server test file (each task is scored at its sites).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from safetensors.torch import save_file

from omnirad.captions import decode_captions
from omnirad.configure import load_config
from omnirad.data.sites import LabelledImages, load_site, server_test_set, task_info
from omnirad.encoders import create_encoder, weights_fingerprint
from omnirad.multitask import site_view
from omnirad.multitask_check import DECLARED
from omnirad.tasks import TaskSpec
from omnirad_fl.server.app_bundle import PUBLISHER_PUB
from omnirad_fl.server.certs import CA_CERT

ENCODER = "vit-tiny"


def write_npz(path: Path, data: LabelledImages) -> Path:
    """MedMNIST's layout: uint8 images and (N, 1) integer labels under ``train_*``; masks as
    MedSegBench has them (``train_label``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data.labels.ndim == 3:
        np.savez_compressed(path, train_images=data.images, train_label=data.labels.astype(np.uint8))
    else:
        np.savez_compressed(path, train_images=data.images, train_labels=data.labels.reshape(-1, 1))
    return path


def write_caption_csv(folder: Path, data: LabelledImages, vocabulary: tuple[str, ...]) -> Path:
    """ROCOv2's layout: PNG images and a CSV of ``path,caption`` (the captions' text from their ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,caption"]
    for n, (image, caption) in enumerate(zip(data.images, decode_captions(data.labels, vocabulary), strict=True)):
        Image.fromarray(image).save(folder / f"{n:04d}.png")
        lines.append(f'{n:04d}.png,"{caption}"')
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    return folder / "captions.csv"


def write_encoder_weights(path: Path) -> Path:
    """The seeded random vit-tiny as a plain timm safetensors file, as a pretrained one would come."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in create_encoder(ENCODER, "", 224).vit.state_dict().items()}
    save_file(state, str(path))
    return path


def write_demo(folder: Path, sites: Sequence[str], server: str, *, size: int = 32, alpha: float = 0.5, rounds: int = 5,
               num_train: int = 600, runtime_port: int = 9094, tasks: Sequence[str] = ()) -> list[Path]:
    folder = folder.resolve()
    if tasks and len(tasks) != len(sites):
        raise ValueError(f"--tasks: {len(tasks)} tasks for {len(sites)} sites; give one per site")
    simulated = load_config({"data.num-sites": len(sites), "data.size": size, "data.alpha": alpha,
                             "data.num-train": num_train, "data.num-test": max(40, num_train // 4),
                             "data.min-site-samples": 10, "multitask.site-tasks": ",".join(tasks)})
    written = []
    for index, name in enumerate(sites):
        view = site_view(simulated, index)
        share = load_site(view.data, index, seed=view.run.seed)
        pooled = LabelledImages(np.concatenate([share.train.images, share.val.images]),
                                np.concatenate([share.train.labels, share.val.labels]))
        task = task_info(view.data)
        written.append(write_caption_csv(folder / "data" / f"site-{name}", pooled, task.label_names) if task.captioning
                       else write_npz(folder / "data" / f"site-{name}.npz", pooled))
    test_file = write_npz(folder / "data" / "test.npz", server_test_set(simulated.data))
    weights = write_encoder_weights(folder / "weights" / f"{ENCODER}.safetensors")
    sha256 = weights_fingerprint(str(weights))
    host, port = server.rsplit(":", 1)
    for index, name in enumerate(sites):
        site = {
            "site": {"name": name, "id": index},
            "server": {"address": f"{host}:{port}", "ca-certificate": f"../certs/{CA_CERT}"},
            "auth-key": f"{name}.key",  # made at the site: omnirad-client --site NAME --keygen
            "data": site_data(task_info(site_view(simulated, index).data), tasks[index] if tasks else "",
                              f"../data/{written[index].relative_to(folder / 'data')}"),
            "encoder": {"name": ENCODER, "weights": f"../weights/{weights.name}", "sha256": sha256},
            "cache-dir": f"../cache/site-{name}",
            "state-dir": f"../state/site-{name}",
            "runtime-port": runtime_port + index,
            # the coordinator's app-signing key, when it made one (omnirad-certs --publisher): run only its apps
            **({"trusted-publishers": [f"../certs/{PUBLISHER_PUB}"]} if (folder / "certs" / PUBLISHER_PUB).exists()
               else {}),
        }
        path = folder / "sites" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(site, sort_keys=False))
        written.append(path)
    data = {"dataset": "deployment", "task": "multi-class", "num-classes": len(task_info(simulated.data).label_names),
            "size": size, "num-sites": len(sites), "test-file": str(test_file)}
    if tasks:  # each site says what it trains; each task is scored at its sites
        data = {"dataset": "deployment", "size": size, "num-sites": len(sites)}
    federation = {
        "num-server-rounds": rounds,
        "data": data,
        "model": {"encoder": ENCODER, "weights": str(weights), "adapter": "mlp", "feature-cache": True,
                  "cache-dir": str(folder / "cache" / "server"),
                  **({"caption-width": 32} if "captions" in tasks else {})},
        "train": {"local-epochs": 2},
        "strategy": {"name": "fedavg", "min-sites": max(1, len(sites) - 1), "round-timeout": 600.0},
        **({"multitask": {"site-tasks": DECLARED}} if tasks else {}),
    }
    (folder / "federation.yaml").write_text(yaml.safe_dump(federation, sort_keys=False))
    return [*written, test_file, weights, folder / "federation.yaml"]


def site_data(task: TaskSpec, name: str, file: str) -> dict[str, object]:
    """The ``data`` section of a site file: its file, what it holds (a caption CSV: no classes) and,
    in a multi-task federation, the ``name`` of the task it trains."""
    data: dict[str, object] = {"file": file, "task": task.kind, "num-classes": 0 if task.captioning else task.num_outputs}
    return {**data, "task-name": name} if name else data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.deploy_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to write data/, weights/, sites/ and federation.yaml")
    parser.add_argument("--sites", nargs="+", default=["A", "B", "C"], metavar="NAME")
    parser.add_argument("--server", default="127.0.0.1:9092", help="the address sites dial (default: 127.0.0.1:9092)")
    parser.add_argument("--size", type=int, default=32, help="image size (default: 32)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the site split")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=600, help="images shared out among the sites")
    parser.add_argument("--runtime-port", type=int, default=9094,
                        help="local ClientApp API port of the first site's SuperNode; the next sites take the next ports")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="TASK",
                        help="a multi-task federation: one embedded task per site (region, finding, lesions)")
    args = parser.parse_args(argv)
    for path in write_demo(args.folder, args.sites, args.server, size=args.size, alpha=args.alpha, rounds=args.rounds,
                           num_train=args.num_train, runtime_port=args.runtime_port, tasks=args.tasks):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
