"""Test-wide settings: offline, loopback-only, quiet."""

import os
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from omnirad.protocol import ROUND_TOKEN, SITE_INFO
from omnirad_fl.server.processes import still_running
from omnirad_fl.strategies import wrapper

# Before anything imports huggingface_hub (it reads these once): never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

PROJECT = Path(__file__).resolve().parents[1]
MOCK_ROUND_TOKEN = "mock-round-token"  # what mock replies echo (fixture ``mock_round_token``)


def answering(content: RecordDict) -> RecordDict:
    """A mock train reply's content as a site sends it: echoing the round's token (``mock_round_token``)."""
    return RecordDict({**content, SITE_INFO: ConfigRecord({ROUND_TOKEN: MOCK_ROUND_TOKEN})})


class FakeGrid:
    """Just enough of Flower's Grid for a strategy's configure_* calls: the connected node ids."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self):
        return list(range(100, 100 + self.num_nodes))


class QueryGrid:
    """A grid whose sites answer one ``query.<action>`` message each: with the given content, or
    (``None``) with an error, as a crashed site would."""

    def __init__(self, action: str, answers: dict[int, RecordDict | None]) -> None:
        self.action, self.answers = action, answers

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            assert msg.metadata.message_type == f"query.{self.action}"
            answer = self.answers[msg.metadata.dst_node_id]
            replies.append(Message(Error(code=0, reason="site crashed"), reply_to=msg) if answer is None
                           else Message(answer, reply_to=msg))
        return replies


@pytest.fixture
def mock_round_token(monkeypatch):
    """Every training round's token is ``MOCK_ROUND_TOKEN``, which mock replies (``answering``) echo."""
    monkeypatch.setattr(wrapper, "new_round_token", lambda: MOCK_ROUND_TOKEN)


@pytest.fixture
def start_round(mock_round_token):
    """Send a round's training messages through the strategy, as its start loop does, without a network."""

    def start(strategy, server_round: int, global_state: dict, num_sites: int) -> list:
        return list(strategy.configure_train(server_round, ArrayRecord(global_state), ConfigRecord(), FakeGrid(num_sites)))

    return start


@pytest.fixture
def task_identity():
    """Messages take their run and node ids from the process's task identity, as in a ServerApp."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class SharedSuperLinks:
    """Loopback simulation SuperLinks, one per federation size (Flower's default ``num-supernodes``),
    each started when a test first needs it and shared by every later run of that size: several runs
    on one SuperLink are what ``flwr run`` does anyway, and each run gets its own run folder. A link
    whose run failed is stopped and replaced, so one bad run cannot hold up the next test's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links: dict = {}  # num_sites -> LocalSuperLink

    def link(self, num_sites: int):
        from omnirad_fl.server.processes import free_loopback_port
        from omnirad_fl.simulations.flower_local import LocalSuperLink, write_flower_config

        if num_sites not in self.links:
            flwr_home = self.root / f"flwr-{num_sites}-sites"
            write_flower_config(flwr_home, num_supernodes=num_sites)
            self.links[num_sites] = LocalSuperLink(flwr_home, PROJECT, http_port=free_loopback_port()).start()
        return self.links[num_sites]

    def flwr_run(self, num_sites: int, run_config: str, timeout: float = 900.0) -> None:
        """``flwr run`` with these overrides on the ``num_sites`` SuperLink; it must succeed."""
        from omnirad_fl.simulations.flower_local import flwr_run

        link = self.link(num_sites)
        try:
            completed = flwr_run(PROJECT, link.env, run_config, timeout=timeout)
            assert completed.returncode == 0
        except BaseException:
            self.stop(num_sites)  # whatever the failed run left behind goes with its SuperLink
            raise

    def run(self, tmp_path: Path, num_sites: int, *run_configs: str, num_sites_key: bool = True) -> list[Path]:
        """Run the app once per configuration on the ``num_sites`` SuperLink; return the run folders
        in order. ``num_sites_key=False`` leaves ``data.num-sites`` out, as a plain Flower set-up does."""
        folders = []
        for number, run_config in enumerate(run_configs):
            runs = tmp_path / f"runs-{number}"
            sites = f" data.num-sites={num_sites}" if num_sites_key else ""
            self.flwr_run(num_sites, f"{run_config}{sites} run.output-dir='{runs}'")
            (folder,) = list(runs.iterdir())
            folders.append(folder)
        return folders

    def stop(self, num_sites: int) -> None:
        """Stop one SuperLink and all it started, by PID, and check nothing of it is left."""
        link = self.links.pop(num_sites)
        link.stop()
        assert len(link.started_pids) >= 2  # the SuperLink, its SuperExec and what they started
        assert not still_running(link.started_pids)


@pytest.fixture
def run_in_process(tmp_path, task_identity):
    """Run the app's phases against its ClientApp in this process (``simulations.in_process``: no
    SuperLink, no Ray, one Flower ``Context`` per site kept across messages, as Ray keeps it).
    ``run_config`` is written as for ``flwr run --run-config`` and parsed by Flower's own parser (or
    given parsed, as a dict); ``data.num-sites`` is ``num_sites``; ``node_configs``: each site's, as
    a deployed SuperNode gets it (a simulation's partitions if not given). Returns the run folder (None for a run that writes none:
pretraining alone), under ``folder`` (the test's own by default). Sites cached by the runs are dropped
    at the end of the test (a simulation's worker processes end with it)."""
    from flwr.common.config import parse_config_args

    from omnirad import site_cache
    from omnirad_fl.simulations.in_process import run_in_process as run

    def run_folder(num_sites: int, run_config: str | dict, folder: Path | None = None,
                   node_configs: list[dict] | None = None) -> Path | None:
        runs = (folder or tmp_path) / "runs"
        parsed = parse_config_args([run_config]) if isinstance(run_config, str) else run_config
        flat = {**parsed, "data.num-sites": num_sites, "run.output-dir": str(runs)}
        finished = run(flat, num_sites, node_configs)
        return None if finished.folder is None else Path(finished.folder.path)

    yield run_folder
    site_cache._SITES.clear()


@pytest.fixture(scope="session")
def superlinks(tmp_path_factory):
    """The session's shared simulation SuperLinks (``SharedSuperLinks``), all stopped by PID at its end."""
    shared = SharedSuperLinks(tmp_path_factory.mktemp("superlinks"))
    yield shared
    failures = []
    for num_sites in list(shared.links):
        try:
            shared.stop(num_sites)
        except AssertionError as failure:  # stop the others all the same, then report
            failures.append(f"the {num_sites}-site SuperLink: {failure!r}")
    assert not failures, failures


# Two rounds on three sites, the cheapest run that is still a real federation through `flwr run`.
THREE_SITE_RUN = {"num-server-rounds": 2, "data.num-train": 600, "data.num-test": 200, "train.local-epochs": 2,
                  "model.adapter": "linear", "model.head-init": "random"}


@pytest.fixture(scope="session")
def three_site_flwr_run(superlinks, tmp_path_factory) -> Path:
    """``THREE_SITE_RUN`` through ``flwr run`` on the session's 3-site SuperLink, as in a plain Flower
    set-up whose federation size is not the project's: no data.num-sites, so the run takes the size
    of Flower's federation. Its run folder is read by the flwr-run tests, and it is the one-machine
    run that the Ray cluster test's run must equal."""
    from omnirad.config import toml_literal

    overrides = " ".join(f"{key}={toml_literal(value)}" for key, value in THREE_SITE_RUN.items())
    (folder,) = superlinks.run(tmp_path_factory.mktemp("three-sites"), 3, overrides, num_sites_key=False)
    return folder
