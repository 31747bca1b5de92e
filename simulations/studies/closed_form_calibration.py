"""The closed-form head's softmax temperature on a split the ridge solution separates: 200
training images, 4 IID sites, 192 vit-tiny features (more than the images of any class), 2
FedAvg rounds after the closed form, the whole federation in this process.

    python simulations/studies/closed_form_calibration.py [--seed 0] [--rounds 2]

Prints the chosen logit scale and each round's test cross-entropy, expected calibration error,
accuracy and AUC (docs/heads.md, "Calibration").
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from flwr.supercore.task_identity import TaskIdentity

from omnirad_fl.server import app as server_app  # noqa: F401 - the ServerApp's module registers every phase
from omnirad_fl.server.phases import ServerRun, run_phases
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.simulations.in_process import InProcessGrid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # as in a ServerApp process
    with tempfile.TemporaryDirectory() as out:
        flat = {"data.num-train": 200, "data.num-test": 200, "data.size": 32, "data.num-sites": 4,
                "data.partition": "iid", "model.head-init": "ridge", "num-server-rounds": args.rounds,
                "run.seed": args.seed, "run.output-dir": out}
        run = run_phases(ServerRun(InProcessGrid(flat, num_sites=4), load_run_config(flat)))
        folder = Path(run.need_folder().path)
        print(f"logit scale {json.loads((folder / 'closed-form.json').read_text())['logit-scale']}")
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            g = json.loads(line)["global"]
            print(f"round {json.loads(line)['round']}: test cross-entropy {g['loss']:.4f}, ece {g['ece']:.4f}, "
                  f"accuracy {g['accuracy']:.3f}, auc {g['auc']:.4f}")


if __name__ == "__main__":
    main()
