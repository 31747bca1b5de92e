"""Issue 32 (hardening): every bad input ends in a message that names it, before anything starts."""

import json

import torch
from safetensors.torch import save_file

from omnirad.configure import load_config
from omnirad.durable import sha256_of
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
