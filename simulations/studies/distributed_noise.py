"""The closed-form ridge head under DP with secure sums, with and without distributed noise
(``privacy.distributed-noise``): each site adding all of the statistics' noise, or its 1/sqrt(n)
share. 4 sites of the embedded data, no rounds after the closed form, seeds 0-2; the test set's
accuracy, macro-F1 and ECE of the shipped head. The whole federation runs in this process.

    python simulations/studies/distributed_noise.py --epsilons 1 3 --num-train 1200
    python simulations/studies/distributed_noise.py --epsilons 8 30 --num-train 2400
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from flwr.supercore.task_identity import TaskIdentity

from omnirad_fl.simulations.in_process import run_in_process


def shipped(epsilon: float, seed: int, distributed: bool, num_train: int) -> dict[str, float]:
    """The final head's test metrics of one run."""
    flat = {"num-server-rounds": 0, "data.num-sites": 4, "data.size": 32, "data.num-train": num_train,
            "data.num-test": 400, "model.head-init": "ridge", "privacy.dp": True, "privacy.epsilon": epsilon,
            "privacy.secure-sum": True, "privacy.distributed-noise": distributed, "run.seed": seed,
            "run.output-dir": tempfile.mkdtemp(prefix="distributed-noise-")}
    folder = run_in_process(flat, 4).need_folder().path
    return dict(json.loads((folder / "summary.json").read_text())["final"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # as a ServerApp's process has
    print("| epsilon | noise | accuracy | macro-F1 (per seed) | ECE |\n|---|---|---|---|---|")
    for epsilon in args.epsilons:
        for distributed in (False, True):
            runs = [shipped(epsilon, seed, distributed, args.num_train) for seed in range(args.seeds)]
            f1 = [r["macro-f1"] for r in runs]
            print(f"| {epsilon:g} | {'1/sqrt(n) per site' if distributed else 'all at every site'} | "
                  f"{statistics.mean(r['accuracy'] for r in runs):.3f} | {statistics.mean(f1):.3f} "
                  f"({', '.join(f'{v:.3f}' for v in f1)}) | {statistics.mean(r['ece'] for r in runs):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
