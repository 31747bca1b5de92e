import json

import numpy as np

from omnirad.configure import load_config
from omnirad.data.report import format_report, label_counts, partition_report
from omnirad_fl.server.run_folder import RunFolder


def test_report_counts_every_site_and_label(tmp_path):
    labels = np.array([0, 0, 1, 2, 2, 2])
    report = partition_report(labels, [np.array([0, 1, 3]), np.array([2, 4, 5])], ("a", "b", "c"))
    assert [s["label-counts"] for s in report["sites"]] == [[2, 0, 1], [0, 1, 2]]
    assert [s["num-samples"] for s in report["sites"]] == [3, 3]
    table = format_report(report).splitlines()
    assert len(table) == 3 and table[1].split() == ["0", "3", "2", "0", "1"]
    folder = RunFolder.create(load_config({"run.output-dir": str(tmp_path)}))
    folder.write_partition(report)
    assert json.loads((folder.path / "partition.json").read_text()) == report
    assert (folder.path / "partition.png").stat().st_size > 0


def test_multilabel_counts_positives_per_label():
    assert label_counts(np.array([[1, 0, 1], [1, 1, 0]]), 3) == [2, 1, 1]
