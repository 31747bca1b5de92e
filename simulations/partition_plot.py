"""Print and plot how a configuration splits its data among sites, without running anything.

    python -m omnirad_fl.simulations.partition_plot docs/partition-dirichlet-0.1.png "data.alpha=0.1 data.num-sites=8"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flwr.common.config import parse_config_args

from omnirad.configure import load_config
from omnirad.data.report import format_report, partition_report, plot_report
from omnirad.data.sites import partition_class_names, partition_labels, pooled_train, site_partitions
from omnirad.plan import RunPlan
from omnirad_fl.simulations.flower_local import DEFAULT_NUM_SUPERNODES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="where to write the PNG (a .json lands beside it)")
    parser.add_argument("overrides", nargs="?", default="", help='configuration keys, as for flwr run --run-config')
    args = parser.parse_args()
    cfg = load_config(parse_config_args([args.overrides]) if args.overrides else {})
    cfg = RunPlan.of(cfg).in_federation(DEFAULT_NUM_SUPERNODES).config  # unset: as many sites as `make demo` simulates
    report = partition_report(partition_labels(pooled_train(cfg.data)), site_partitions(cfg.data, seed=cfg.run.seed), partition_class_names(cfg.data))
    d = cfg.data
    title = f"{d.dataset}: {d.partition} split" + (f", alpha {d.alpha}" if d.partition == "dirichlet" else "")
    plot_report(report, args.path, f"{title}, {d.num_sites} sites")
    args.path.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(format_report(report))
    print(f"wrote {args.path}")


if __name__ == "__main__":
    main()
