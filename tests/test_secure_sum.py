"""Secure sums (``privacy.secure-sum``): the server learns only the total of the sites' statistics,
and the closed-form head stays exactly the pooled one.

The protocol alone (``omnirad.secure_sum``): exact sums, overflow refused, one site's masked vector
uniform. Through the real ClientApp handlers in this process (``InProcessGrid``): the secure closed
form equals the plain federated one and its pooled twin on three splits; nothing the server receives
or stores holds one site's values; a replayed or tampered vector is refused naming the phase; a
site dropping after the keys costs one restart and the head is the pooled head of the others; each
task group's sums are among its own sites. (The federated word counts: tests/test_vocabulary.py.)
"""

import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Array, ConfigRecord, Error, Message
from scipy import stats as scipy_stats

from omnirad import secure_sum as ss
from omnirad.closed_form import HEAD_INITS, HeadStatistics, closed_form_head, head_inputs, statistics_targets
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.models import encoder_for, new_model
from omnirad.protocol import ARRAYS, QUERY_SECURE_SUM_MASKED, SECURE_SUM
from omnirad.site_cache import get_site
from omnirad.training import predict
from omnirad_fl.server import app as server_app  # noqa: F401 - the ServerApp's module registers every phase
from omnirad_fl.server.closed_form import pooled_statistics, solve_head
from omnirad_fl.simulations.in_process import FIRST_NODE, InProcessGrid

SMALL = {"data.num-train": 400, "data.num-test": 80, "data.size": 32, "data.num-sites": 4, "data.alpha": 0.1,
         "data.min-site-samples": 10, "model.head-init": "ridge", "model.adapter": "linear"}
SPLITS = {"iid": {"data.partition": "iid"}, "dirichlet 0.1": {"data.partition": "dirichlet"},
          "one style per site": {"data.partition": "modality"}}


def fixed_keys(count: int, seed: int) -> list[X25519PrivateKey]:
    """X25519 keys from a seeded generator: a reproducible test (the protocol makes fresh random ones)."""
    rng = np.random.default_rng(seed)
    return [X25519PrivateKey.from_private_bytes(rng.bytes(32)) for _ in range(count)]


def run_sum(contributions, keys, salt=b"s" * 32):
    layout = ss.layout_of(contributions[0])
    exponents = tuple(max(ss.exponent_of(c[name]) for c in contributions) for name, _ in layout)
    scales = ss.Scales(exponents, len(contributions))
    roster = [ss.public_bytes(k) for k in keys]
    masked = [ss.masked_contribution(c, layout, scales, k, roster, salt) for c, k in zip(contributions, keys, strict=True)]
    return masked, layout, scales


# --- the protocol --------------------------------------------------------------------------------

def test_masked_vectors_add_up_to_the_exact_sum_of_float64_values_of_any_magnitude():
    rng = np.random.default_rng(0)
    sites = [{"big": rng.normal(size=50) * 1e9, "small": rng.normal(size=30) * 1e-7,
              "counts": rng.integers(0, 5000, size=4).astype(np.float64), "zeros": np.zeros(3)} for _ in range(5)]
    masked, layout, scales = run_sum(sites, fixed_keys(5, 1))
    sums = ss.unmasked_sum(masked, layout, scales)
    for name, _ in layout:
        exact = np.array([sum(np.float128(s[name][i]) for s in sites) for i in range(len(sites[0][name]))])
        bound = 2.0 ** (scales.exponents[layout.index((name, len(sites[0][name])))] - 58)  # n 2^-k, n=5 -> 2^(e-59)
        assert np.abs(sums[name] - exact.astype(np.float64)).max() <= max(bound, 0.0)
    np.testing.assert_array_equal(sums["counts"], sum(s["counts"] for s in sites))  # whole numbers exactly
    np.testing.assert_array_equal(sums["zeros"], 0.0)
    # one vector alone is nothing like the values it carries
    assert not np.array_equal(masked[0][:4], ss.encode(sites[0]["big"][:4], scales.exponents[0], 5))


def test_overflow_is_refused_and_never_wraps():
    assert ss.exponent_of(np.array([3.0])) == 4 and ss.exponent_of(np.array([16.0])) == 8  # a bound above 16
    with pytest.raises(ss.SecureSumError, match="agreed bound"):
        ss.encode(np.array([16.0]), 4, num_sites=2)  # a site above the agreed bound: refused, not wrapped
    with pytest.raises(ss.SecureSumError, match="NaN"):
        ss.exponent_of(np.array([1.0, np.nan]))
    words = ss.encode(np.array([15.9]), 4, num_sites=2)
    ss.decode(words + words, 4, num_sites=2)  # two sites at the bound fit
    with pytest.raises(ss.SecureSumError, match="range"):
        ss.decode(words + words + words + words, 4, num_sites=2)  # more than two sites' worth: refused


def test_a_site_refuses_a_roster_that_would_unmask_it():
    keys = fixed_keys(3, 2)
    own = ss.public_bytes(keys[0])
    for roster, message in (([own], "at least 2"), ([own, own], "distinct"),
                            ([ss.public_bytes(keys[1]), ss.public_bytes(keys[2])], "not in the roster")):
        with pytest.raises(ss.SecureSumError, match=message):
            ss.check_roster(roster, own)


def test_what_the_server_receives_from_one_site_is_uniform_whatever_its_values():
    """400 sessions of 3 sites with fresh (seeded) keys; site 0 sends either all zeros or a
    large structured vector. Its masked words are uniform on Z_2^64 (Kolmogorov-Smirnov on the
    words / 2^64, chi-square on the top and bottom bytes), and the two inputs' words cannot be told
    apart (two-sample KS). Seeded: the p-values are those of this one draw."""
    words = {}
    for name, values in (("zeros", np.zeros(16)), ("structured", np.arange(16) * 1e3 + 7.0)):
        draws = []
        for session in range(400):
            keys = fixed_keys(3, 1000 * session + (name == "zeros"))
            contributions = [{"v": values}, {"v": np.ones(16)}, {"v": np.ones(16)}]
            masked, _, _ = run_sum(contributions, keys, salt=session.to_bytes(32, "little"))
            draws.append(masked[0][:16])
        words[name] = np.concatenate(draws)
    for name, sent in words.items():
        unit = sent.astype(np.float64) / 2.0**64
        assert scipy_stats.kstest(unit, "uniform").pvalue > 1e-3, name
        for byte in (sent >> np.uint64(56), sent & np.uint64(0xFF)):
            counts = np.bincount(byte.astype(np.int64), minlength=256)
            assert scipy_stats.chisquare(counts).pvalue > 1e-3, name
    assert scipy_stats.ks_2samp(words["zeros"].astype(np.float64), words["structured"].astype(np.float64)).pvalue > 1e-3


def test_secure_sum_is_refused_where_the_server_would_see_one_sites_values():
    assert load_config({}).privacy.secure_sum is False  # off by default
    for flat in ({"data.num-sites": 1}, {"strategy.name": "spectral"}):
        with pytest.raises(ConfigError, match="privacy.secure-sum"):
            load_config({"privacy.secure-sum": True, **flat})
    # a federated caption vocabulary: its counts are summed securely (tests/test_vocabulary.py)
    assert load_config({"privacy.secure-sum": True, "data.dataset": "files", "data.task": "captioning",
                        "data.site-files": "a.csv,b.csv", "model.adapter": "caption-decoder"}).privacy.secure_sum


# --- through the sites' handlers -------------------------------------------------------------------

def pooled_twin(cfg, site_ids):
    """The closed form fitted centrally on the named sites' training data together."""
    sites = [get_site(cfg, s) for s in site_ids]
    head = closed_form_head(new_model(cfg))
    x = head_inputs(head, torch.cat([s.train_set.inputs for s in sites]))
    y = statistics_targets(sites[0].task, np.concatenate([s.train_set.labels for s in sites]))
    return HEAD_INITS[cfg.model.head_init].solve(HeadStatistics.of(x, y, with_gram=True), cfg.model), sites


def solve(flat, grid=None):
    cfg = load_config(flat)
    grid = grid if grid is not None else InProcessGrid(flat, cfg.data.num_sites)
    model = new_model(cfg)
    state, report = solve_head(grid, cfg, model, ConfigRecord(), feature_width=encoder_for(cfg).num_features)
    return cfg, model, state, report


@pytest.mark.parametrize("split", list(SPLITS))
def test_the_secure_closed_form_equals_the_plain_federated_one_and_its_pooled_twin(split, task_identity):
    """Solved weights (float64, before the head stores them as float32) within 1e-6 of the pooled
    solution (the masked words carry the float64 Gram matrix exactly); the heads' predictions within
    1e-4 of the plain federated head's (whose sites send float32 where their checks allow) and the
    pooled head's."""
    flat = {**SMALL, **SPLITS[split]}
    secure_flat = {**flat, "privacy.secure-sum": True}
    _, plain_model, _, plain_report = solve(flat)
    cfg, secure_model, _, report = solve(secure_flat)
    assert report["secure-sum"] == {"sites": 4, "restarts": 0, "dropped-nodes": []}
    assert report["logit-scale"] == plain_report["logit-scale"]  # the temperature's losses summed securely too
    # the plain sites' float32 statistics move the head within 1e-4, its summed losses as little
    np.testing.assert_allclose(report["pooled-validation-loss"], plain_report["pooled-validation-loss"], rtol=1e-4)
    (weight, bias), sites = pooled_twin(cfg, range(4))
    width = encoder_for(cfg).num_features
    stats, _, _ = pooled_statistics(InProcessGrid(secure_flat, 4), cfg, new_model(cfg), ConfigRecord(),
                                    feature_width=width)
    solved_weight, solved_bias = HEAD_INITS["ridge"].solve(stats, cfg.model)
    torch.testing.assert_close(solved_weight, weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(solved_bias, bias, atol=1e-6, rtol=0)
    pooled_model = new_model(cfg)
    closed_form_head(pooled_model).set_closed_form(weight.float(), bias.float(), report["logit-scale"])
    test_x = torch.cat([s.val_set.inputs for s in sites])
    secure_predictions = predict(secure_model, test_x)
    torch.testing.assert_close(secure_predictions, predict(plain_model, test_x), atol=1e-4, rtol=0)
    torch.testing.assert_close(secure_predictions, predict(pooled_model, test_x), atol=1e-4, rtol=0)
    # the masked statistics carry the Gram matrix's upper triangle: about half the full float64 matrix
    assert all(sent < 0.6 * 8 * width * width for sent in report["statistics-bytes-per-site"].values())


class Recording(InProcessGrid):
    """The in-process federation, keeping every reply the server receives; ``meddle(node, kind, reply)``
    may replace a reply (a dropout, a tampered or replayed vector)."""

    def __init__(self, run_config, num_sites, meddle=None):
        super().__init__(run_config, num_sites)
        self.replies: list[tuple[int, str, Message]] = []
        self.meddle = meddle

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg, reply in zip(messages, super().send_and_receive(messages, timeout), strict=True):
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            if self.meddle is not None:
                reply = self.meddle(node, kind, reply)
            self.replies.append((node, kind, reply))
            replies.append(reply)
        return replies


def test_a_site_dropping_after_the_keys_costs_one_restart_and_the_head_is_the_others_pooled_head(task_identity):
    gone = FIRST_NODE + 3

    def drop(node, kind, reply):
        if node == gone and kind == f"query.{QUERY_SECURE_SUM_MASKED}":
            return Message(Error(code=0, reason="site crashed"), reply_to=reply)
        return reply

    flat = {**SMALL, "privacy.secure-sum": True}
    cfg, _, state, report = solve(flat, Recording(flat, 4, drop))
    assert report["secure-sum"] == {"sites": 3, "restarts": 1, "dropped-nodes": [gone]}
    assert set(report["statistics-bytes-per-site"]) == {"site 0", "site 1", "site 2"}
    (weight, _), _ = pooled_twin(cfg, range(3))
    torch.testing.assert_close(state["fc.weight"], (weight * report["logit-scale"]).float(), atol=1e-6, rtol=0)


def test_a_second_dropout_in_the_restarted_sum_ends_the_phase(task_identity):
    sessions = []

    def drop(node, kind, reply):  # site 3 fails the first session's masked step, site 2 the restarted one's
        if kind != f"query.{QUERY_SECURE_SUM_MASKED}":
            return reply
        if node == FIRST_NODE:  # the first of each session's sites
            sessions.append(node)
        victim = FIRST_NODE + 3 if len(sessions) == 1 else FIRST_NODE + 2
        return Message(Error(code=0, reason="site crashed"), reply_to=reply) if node == victim else reply

    flat = {**SMALL, "privacy.secure-sum": True}
    with pytest.raises(RuntimeError, match=r"closed-form head \(secure sum\): node 102 dropped again"):
        solve(flat, Recording(flat, 4, drop))
    assert len(sessions) == 2  # one restart, no more


def test_nothing_the_server_receives_or_stores_holds_one_sites_values(tmp_path, task_identity, caplog):
    from omnirad_fl.server.phases import ServerRun, run_phases
    from omnirad_fl.server.run_config import load_run_config

    flat = {**SMALL, "privacy.secure-sum": True, "num-server-rounds": 0, "run.output-dir": str(tmp_path)}
    grid = Recording(flat, 4)
    caplog.set_level("DEBUG")
    run = run_phases(ServerRun(grid, load_run_config(flat)))
    cfg = load_config(flat)
    per_site = [get_site(cfg, s).head_statistics()[0] for s in range(4)]
    # what each statistics-phase reply holds: a public key, bounds, masked words; never the sums
    secure = [(node, kind, reply) for node, kind, reply in grid.replies if "secure_sum" in kind]
    assert secure and all(set(reply.content) <= {ARRAYS, SECURE_SUM, "metrics"} for _, _, reply in secure)
    assert all(set(reply.content["metrics"]) <= {"site-id"} for _, _, reply in secure)
    assert all(reply.content[ARRAYS]["masked"].numpy().dtype == np.uint64
               for _, kind, reply in secure if ARRAYS in reply.content)
    assert not [kind for _, kind, _ in grid.replies if kind in ("query.head_statistics", "query.logit_scale")]
    # no site's feature sums, counts or Gram entries, as float64 or float32 bytes or as text, in the run folder
    stored = b"".join(path.read_bytes() for path in run.need_folder().path.rglob("*") if path.is_file())
    stored += caplog.text.encode() + b"".join(
        reply.content[ARRAYS]["masked"].numpy().tobytes() for _, _, reply in secure if ARRAYS in reply.content)
    for stats in per_site:
        values = np.concatenate([stats.feature_sum.numpy()[:20], stats.gram.numpy().ravel()[:20]])
        for value in values:
            for pattern in (np.float64(value).tobytes(), np.float32(value).tobytes(), repr(float(value)).encode(),
                            f"{value:.6g}".encode()):
                assert pattern not in stored
    assert json.loads((run.need_folder().path / "closed-form.json").read_text())["examples"] == sum(
        float(s.num_samples) for s in per_site)  # the total, which the server is meant to learn


def test_a_replayed_or_tampered_vector_fails_the_sum_naming_the_phase_not_a_site(task_identity):
    flat = {**SMALL, "privacy.secure-sum": True}
    kept = {}

    def keep(node, kind, reply):
        if kind == f"query.{QUERY_SECURE_SUM_MASKED}":
            kept.setdefault(node, reply)
        return reply

    solve(flat, Recording(flat, 4, keep))  # an earlier session's replies

    def replay(node, kind, reply):  # site 1's vector of the earlier session, as it was
        return kept[node] if node == FIRST_NODE + 1 and kind == f"query.{QUERY_SECURE_SUM_MASKED}" else reply

    with pytest.raises(RuntimeError, match="another session"):
        solve(flat, Recording(flat, 4, replay))

    def relabel(node, kind, reply):  # the same, relabelled with this session's token: the masks do not cancel
        if node == FIRST_NODE + 1 and kind == f"query.{QUERY_SECURE_SUM_MASKED}":
            reply.content[ARRAYS] = kept[node].content[ARRAYS]
        return reply

    with pytest.raises(RuntimeError, match=r"^closed-form head: the secure sum fails its checks: the masks do not"):
        solve(flat, Recording(flat, 4, relabel))

    for tamper, why in ((lambda w: np.concatenate([w[:1] + np.uint64(1 << 40), w[1:]]), "examples|label counts"),
                        (lambda w: np.concatenate([w[:100], w[100:200] ^ np.uint64(1 << 63), w[200:]]), "range")):
        def alter(node, kind, reply, tamper=tamper):
            if node == FIRST_NODE + 2 and kind == f"query.{QUERY_SECURE_SUM_MASKED}":
                words = reply.content[ARRAYS]["masked"].numpy()
                reply.content[ARRAYS]["masked"] = Array(tamper(words))
            return reply

        with pytest.raises(RuntimeError, match=rf"^closed-form head: the secure sum fails its checks: .*({why})") as err:
            solve(flat, Recording(flat, 4, alter))
        assert "site 2" not in str(err.value) and str(FIRST_NODE + 2) not in str(err.value)


def test_a_site_masks_once_per_session_and_refuses_a_replayed_request(task_identity):
    flat = {**SMALL, "privacy.secure-sum": True}
    requests = []

    class Replaying(Recording):
        def send_and_receive(self, messages, timeout=None):
            replies = super().send_and_receive(messages, timeout)
            for msg in messages:
                if msg.metadata.message_type == f"query.{QUERY_SECURE_SUM_MASKED}" and not requests:
                    requests.append(msg)
            return replies

    grid = Replaying(flat, 4)
    solve(flat, grid)
    again = InProcessGrid.send_and_receive(grid, [requests[0]])[0]  # the same request, delivered again
    assert again.has_error()


def test_the_secure_feature_standardisation_is_the_plain_one(task_identity):
    from omnirad_fl.server.gather import secure_standardisation
    from omnirad_fl.strategies.site_queries import collect_standardisation

    flat = {**SMALL, "model.standardise-features": True}
    plain, plain_images = collect_standardisation(InProcessGrid(flat, 4))
    secure_flat = {**flat, "privacy.secure-sum": True}
    grid = Recording(secure_flat, 4)
    secure, images = secure_standardisation(grid)
    assert images == plain_images
    torch.testing.assert_close(secure.mean, plain.mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(secure.std, plain.std, atol=1e-6, rtol=1e-6)
    assert {kind for _, kind, _ in grid.replies} == {"query.secure_sum_keys", "query.secure_sum_masked"}


def test_each_task_group_gets_its_own_sites_secure_sum(task_identity, tmp_path):
    from omnirad.broadcast import Broadcast
    from omnirad.multitask import declaration, group_sites, site_view, trained_task
    from omnirad_fl.server.closed_form import closed_form_tasks
    from omnirad_fl.server.multitask import initial_record
    from omnirad_fl.server.run_folder import RunFolder

    solved = {}
    for secure in (False, True):
        flat = {**SMALL, "data.num-sites": 6, "data.partition": "iid", "run.output-dir": str(tmp_path / str(secure)),
                "multitask.site-tasks": "region,region,finding,finding,lesions,lesions", "privacy.secure-sum": secure}
        cfg = load_config(flat)
        groups = group_sites({FIRST_NODE + s: (s, declaration(trained_task(cfg.multitask, s), site_view(cfg, s).data))
                              for s in range(6)}, None)
        record, _ = initial_record(cfg, groups)
        grid = Recording(flat, 6)
        solved[secure], summary = closed_form_tasks(grid, cfg, groups, record, ConfigRecord(), RunFolder.create(cfg),
                                                    broadcast=Broadcast(), feature_width=encoder_for(cfg).num_features)
        assert set(summary["closed-form"]) == {"region", "finding"}
    # every secure sum (statistics, temperature losses) is among one group's sites alone
    sessions: dict[str, set[int]] = {}
    for node, kind, reply in grid.replies:
        if kind == "query.secure_sum_masked":
            sessions.setdefault(str(reply.content[SECURE_SUM]["token"]), set()).add(node)
    assert sorted(map(sorted, sessions.values())) == [[FIRST_NODE, FIRST_NODE + 1]] * 2 + [[FIRST_NODE + 2,
                                                                                            FIRST_NODE + 3]] * 2
    for key, value in solved[False].items():  # the plain sites send float32 roots: within their rounding
        torch.testing.assert_close(solved[True][key], value, atol=1e-5, rtol=1e-5)


def test_with_dp_each_site_noises_then_masks_and_the_head_is_the_plain_dp_head(tmp_path, task_identity):
    """Under DP a site's noise comes from a fixed seed, so the masked step repeats the keys step's
    release (accounted once); the secure head equals the plain DP head and the epsilons are the same."""
    from safetensors.torch import load_file

    from omnirad_fl.server.phases import ServerRun, run_phases
    from omnirad_fl.server.run_config import load_run_config

    heads, reports = {}, {}
    for secure in (False, True):
        flat = {**SMALL, "privacy.dp": True, "privacy.epsilon": 3.0, "num-server-rounds": 0,
                "privacy.secure-sum": secure, "run.output-dir": str(tmp_path / str(secure))}
        folder = run_phases(ServerRun(InProcessGrid(flat, 4), load_run_config(flat))).need_folder().path
        heads[secure] = load_file(folder / "final_adapter.safetensors")
        reports[secure] = json.loads((folder / "closed-form.json").read_text())
    assert reports[True]["epsilon-per-site"] == reports[False]["epsilon-per-site"]
    assert all(eps == pytest.approx(3.0, rel=0.02) for eps in reports[True]["epsilon-per-site"].values())
    for key, value in heads[False].items():
        torch.testing.assert_close(heads[True][key], value, atol=1e-5, rtol=1e-6)


def test_a_site_process_restarted_between_the_steps_computes_the_same_values_again(task_identity):
    """The masked step normally reuses what the keys step computed (kept in the site's process); a
    fresh process computes it again, and the digest kept in the site's context proves it the same."""
    from omnirad_fl.client import secure_sum as site_side

    class Restarting(Recording):
        def send_and_receive(self, messages, timeout=None):
            if any(m.metadata.message_type == f"query.{QUERY_SECURE_SUM_MASKED}" for m in messages):
                site_side.PENDING.clear()
            return super().send_and_receive(messages, timeout)

    flat = {**SMALL, "privacy.secure-sum": True}
    _, _, kept_state, _ = solve(flat)
    _, _, state, report = solve(flat, Restarting(flat, 4))
    assert report["secure-sum"]["restarts"] == 0
    for key, value in kept_state.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0)


def test_distributed_noise_leaves_the_sum_one_sites_noise_and_accounts_epsilon_as_before(tmp_path, task_identity):
    """privacy.distributed-noise: each of the n sites adds 1/sqrt(n) of the statistics' noise, so the
    secure sum's error against the exact (clipped) sums is about sqrt(n) = 2 times smaller than with
    every site adding all of it, and each site's epsilon is the same (the server sees only the sum).
    A restart draws fresh noise for the smaller roster: the sum still carries one site's noise."""
    from omnirad.closed_form import clip_rows
    from omnirad.protocol import SIMULATION_STATE_DIR
    from omnirad_fl.server.closed_form import pooled_statistics

    def exact_sum(cfg, site_ids):
        head = closed_form_head(new_model(cfg))
        sites = [get_site(cfg, s) for s in site_ids]
        x = clip_rows(head_inputs(head, torch.cat([s.train_set.inputs for s in sites])).double(),
                      cfg.privacy.max_feature_norm)
        y = statistics_targets(sites[0].task, np.concatenate([s.train_set.labels for s in sites]))
        return HeadStatistics.of(x, y, with_gram=True)

    def noise_in_sum(distributed, site_ids=range(4), meddle=None):
        flat = {**SMALL, "privacy.dp": True, "privacy.epsilon": 3.0, "num-server-rounds": 0,
                "privacy.secure-sum": True, "privacy.distributed-noise": distributed}
        cfg = load_config(flat)
        instructions = ConfigRecord({SIMULATION_STATE_DIR: str(tmp_path / f"{distributed}-{len(site_ids)}")})
        stats, _, epsilons = pooled_statistics(Recording(flat, 4, meddle), cfg, new_model(cfg), instructions,
                                               feature_width=encoder_for(cfg).num_features)
        return float((stats.gram - exact_sum(cfg, site_ids).gram).std()), epsilons

    for alone in ({"privacy.dp": True}, {"privacy.secure-sum": True}):  # it needs both, and noised statistics
        with pytest.raises(ConfigError, match="privacy.distributed-noise"):
            load_config({**SMALL, **alone, "privacy.distributed-noise": True})
    full, full_eps = noise_in_sum(False)
    shared, shared_eps = noise_in_sum(True)
    assert shared_eps == full_eps  # the release's noise multiplier, as the server sees the sum, is the same
    assert 0.4 < shared / full < 0.6, (shared, full)  # 1/sqrt(4) = 0.5: the sum carries one site's noise

    def drop(node, kind, reply):
        if node == FIRST_NODE + 3 and kind == f"query.{QUERY_SECURE_SUM_MASKED}":
            return Message(Error(code=0, reason="site crashed"), reply_to=reply)
        return reply

    restarted, _ = noise_in_sum(True, range(3), drop)
    assert 0.4 < restarted / full < 0.6, (restarted, full)  # three fresh shares of 1/sqrt(3): one site's noise
