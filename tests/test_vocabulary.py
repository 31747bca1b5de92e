"""The federated caption vocabulary: sites send word counts of their training captions (no word
rarer than data.vocabulary-min-count), the server checks and sums them, keeps the vocabulary in
the run folder and sends it with every message; a site without a vocabulary file reads its
captions with it. Under privacy.secure-sum each site sends its words as before and its counts only
into a secure sum: the vocabulary is the plain one, and no reply holds one site's counts."""

from collections import Counter

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from PIL import Image

from omnirad import secure_sum as ss
from omnirad.adapters import trainable_state
from omnirad.captions import SPECIAL_TOKENS, build_vocabulary, caption_words, decode_captions, read_vocabulary
from omnirad.config import ConfigError, to_flat
from omnirad.configure import load_config
from omnirad.data.sites import load_site, task_info, training_captions
from omnirad.models import new_model
from omnirad.multitask import declaration, group_sites, task_config
from omnirad.plan import RunPlan
from omnirad.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    NODE_CACHE_DIR,
    NODE_DATA_FILE,
    NODE_NUM_CLASSES,
    NODE_SITE_ID,
    NODE_TASK_KIND,
    NODE_TASK_NAME,
    NODE_WEIGHTS,
    SECURE_SUM,
    SITE_ID,
    WORD_COUNTS,
)
from omnirad.tasks import TaskSpec
from omnirad.vocabulary import SiteWordCounts, federated_vocabulary, pooled_counts, site_words
from omnirad_fl.client import app as client_app
from omnirad_fl.client.cli import check_data
from omnirad_fl.client.deployment import message_plan, site_of, site_plan, task_name, task_view
from omnirad_fl.client.site_config import SiteConfig
from omnirad_fl.server.run_folder import VOCABULARY_FILE, RunFolder
from omnirad_fl.server.vocabulary import (
    gather_vocabulary,
    group_vocabularies,
    needs_word_count,
    secure_counts,
    vocabulary_instructions,
)
from omnirad_fl.simulations.flower_local import instruction
from tests.conftest import QueryGrid

CAPTIONS = ["Chest radiograph with a mass", "CT of the head, no abnormality", "MRI of the pelvis with nodules",
            "Chest CT with a nodule"]


def write_site(folder, captions: list[str], splits: list[str] | None = None):
    """A caption CSV with one image per caption; a split column when ``splits`` is given."""
    folder.mkdir(parents=True)
    lines = ["path,caption,patient" + (",split" if splits else "")]
    for n, caption in enumerate(captions):
        Image.new("L", (20, 20), 7 * n % 256).save(folder / f"{n}.png")
        lines.append(f'{n}.png,"{caption}",p{n}' + (f",{splits[n]}" if splits else ""))
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    return folder / "captions.csv"


def caption_run(tmp_path, site_files: list, **more) -> dict:
    return {"data.dataset": "files", "data.site-files": ",".join(map(str, site_files)), "data.task": "captioning",
            "model.adapter": "caption-decoder", "model.encoder": "vit-tiny", "data.size": 28,
            "model.caption-width": 16, "model.cache-dir": str(tmp_path / "cache"), "run.output-dir": str(tmp_path / "runs"),
            "data.num-sites": len(site_files), **more}


def two_sites(tmp_path) -> tuple[list, dict[str, list[str]]]:
    """Site 0 splits its rows itself (a patient's name once in training, a word only in validation);
    site 1 has no split column (a local split keeps some training rows for validation)."""
    first = [*CAPTIONS * 3, "Radiograph of John Doe", "zebra zebra zebra pelvis", "zebra mass"]
    splits = ["train"] * 13 + ["val", "val"]
    second = [CAPTIONS[n % 4] + (" mri" if n % 5 == 0 else "") for n in range(20)]
    paths = [write_site(tmp_path / "a", first, splits), write_site(tmp_path / "b", second)]
    return paths, {"first": first, "second": second}


class WordCountSites:
    """Sites answering query.word_counts through the real ClientApp handler; node 100 + i is site i."""

    def __init__(self, run_config: dict, num_sites: int) -> None:
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config=run_config,
                                          node_config={"partition-id": i, "num-partitions": num_sites})
                         for i in range(num_sites)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            TaskIdentity.node_id = node
            replies.append(client_app.app(instruction(msg.metadata.message_type, msg.content, node),
                                                  self.contexts[node]))
        return replies


def test_a_site_sends_only_words_seen_at_least_min_count_times():
    captions = ["Chest CT, mass", "chest CT with a mass", "CT of Mr Smith"]
    sent = SiteWordCounts.of(captions, min_count=2)
    assert sent.counts == {"chest": 2, "ct": 3, "mass": 2}  # ',' once, 'smith' once: neither leaves
    assert SiteWordCounts.of(captions, min_count=1).counts["smith"] == 1
    assert sent.to_record() == {"words": ["chest", "ct", "mass"], "counts": [2, 3, 2]}
    assert sent.nbytes == len("chestctmass") + 3 * 8


def test_one_site_gets_the_vocabulary_the_local_tool_builds_from_the_same_captions():
    """Same normalisation, same threshold, same order (count descending, then the word) as
    ``python -m omnirad.captions``'s build_vocabulary: one tokenizer pipeline, not two."""
    captions = [*CAPTIONS * 3, "Ünïcode ﬁbrosis, CT", "CT: ﬁbrosis"]
    for min_count in (1, 2, 3):
        assert federated_vocabulary([SiteWordCounts.of(captions, min_count)]) == build_vocabulary(captions, min_count)
    assert "fibrosis" in build_vocabulary(captions, 2)  # NFKC: the ligature is two letters, in both


def test_the_server_sums_counts_over_sites_orders_them_and_cuts_to_max_words():
    sites = [SiteWordCounts({"ct": 5, "mass": 2}), SiteWordCounts({"mass": 4, "chest": 3, "brain": 3})]
    assert federated_vocabulary(sites) == (*SPECIAL_TOKENS, "mass", "ct", "brain", "chest")
    assert federated_vocabulary(sites, max_words=2) == (*SPECIAL_TOKENS, "mass", "ct")
    assert federated_vocabulary(reversed(sites)) == federated_vocabulary(sites)  # the order of replies does not matter


def reply(words, counts, site: int | None = 0) -> RecordDict:
    content = RecordDict({WORD_COUNTS: ConfigRecord({"words": words, "counts": counts})})
    if site is not None:
        content[METRICS] = MetricRecord({SITE_ID: site})
    return content


@pytest.mark.parametrize(("bad", "message"), [
    (reply(["ct", "mass"], [3, 1], site=1), "site 1 \\(node 8\\): count 1: .*data.vocabulary-min-count=2"),
    (reply(["two words"], [3], site=1), "site 1 \\(node 8\\): 'two words' is not a word"),
    (reply(["Chest"], [3], site=1), "site 1 \\(node 8\\): 'Chest' is not a word"),
    (reply(["ct"], [2.5], site=1), "count 2.5"),
    (reply(["ct"], [True], site=1), "count True"),
    (reply(["ct", "ct"], [3, 3], site=1), "sent twice"),
    (reply(["ct", "mass"], [3], site=1), "one length"),
    (reply([3], [3], site=None), "node 8: 3 is not a word"),
    (RecordDict({METRICS: MetricRecord({SITE_ID: 1})}), "site 1 \\(node 8\\): the reply holds no word counts"),
    (None, "caption vocabulary: node 8 did not answer"),
])
def test_a_malformed_or_missing_reply_is_refused_naming_the_site(tmp_path, task_identity, bad, message):
    cfg = load_config(caption_run(tmp_path, ["a.csv", "b.csv"]))
    grid = QueryGrid("word_counts", {7: reply(["ct"], [4]), 8: bad})
    with pytest.raises(RuntimeError, match=message):
        gather_vocabulary(grid, cfg)


def test_no_word_frequent_enough_at_any_site_is_an_error_naming_the_key(tmp_path, task_identity):
    cfg = load_config(caption_run(tmp_path, ["a.csv"], **{"data.vocabulary-min-count": 5}))
    with pytest.raises(RuntimeError, match="data.vocabulary-min-count=5"):
        gather_vocabulary(QueryGrid("word_counts", {7: reply([], [])}), cfg)


def test_captioning_without_a_vocabulary_file_counts_one_and_the_threshold_is_checked(tmp_path):
    cfg = load_config(caption_run(tmp_path, ["a.csv"]))
    assert needs_word_count(cfg) and cfg.data.vocabulary_min_count == 2
    with pytest.raises(ConfigError, match="data.vocabulary: no vocabulary yet"):
        task_info(cfg.data)
    with pytest.raises(ConfigError, match="data.vocabulary-min-count"):
        load_config(caption_run(tmp_path, ["a.csv"], **{"data.vocabulary-min-count": 0}))
    vocabulary = tmp_path / "v.txt"
    vocabulary.write_text("ct\n")
    assert not needs_word_count(load_config(caption_run(tmp_path, ["a.csv"], **{"data.vocabulary": str(vocabulary)})))
    assert not needs_word_count(load_config(caption_run(tmp_path, ["a.csv"], **{"run.resume-from": str(tmp_path)})))


def test_training_captions_are_the_rows_a_site_trains_on(tmp_path):
    paths, captions = two_sites(tmp_path)
    every = build_vocabulary([*captions["first"], *captions["second"]])
    (tmp_path / "all.txt").write_text("\n".join(every[len(SPECIAL_TOKENS):]))
    cfg = load_config(caption_run(tmp_path, paths, **{"data.vocabulary": str(tmp_path / "all.txt")}))
    assert training_captions(cfg.data, 0, seed=cfg.run.seed) == captions["first"][:13]  # its own split: the validation rows stay out
    site = load_site(cfg.data, 1, seed=cfg.run.seed)  # no split column: the same local split as training uses
    assert len(training_captions(cfg.data, 1, seed=cfg.run.seed)) == len(site.train) < 20
    assert [" ".join(caption_words(c)) for c in training_captions(cfg.data, 1, seed=cfg.run.seed)] == decode_captions(site.train.labels, every)


def test_the_vocabulary_phase_through_the_sites_handlers_then_a_site_reads_its_captions_with_it(tmp_path, task_identity):
    paths, _ = two_sites(tmp_path)
    flat = caption_run(tmp_path, paths)
    cfg = load_config(flat)
    vocabulary, entry = gather_vocabulary(WordCountSites(flat, 2), cfg)
    words = set(vocabulary[len(SPECIAL_TOKENS):])
    assert {"john", "doe", "zebra"}.isdisjoint(words)  # once in training, or only in validation: never sent
    assert {"chest", "pelvis", "mri", "nodules", ","} <= words
    expected = federated_vocabulary(SiteWordCounts.of(training_captions(cfg.data, s, seed=cfg.run.seed), 2) for s in (0, 1))
    assert vocabulary == expected
    assert entry["words"] == len(words) and entry["min-count"] == 2
    assert set(entry["bytes-per-site"]) == {"site 0", "site 1"} and all(b > 0 for b in entry["bytes-per-site"].values())

    folder = RunFolder.create(cfg, vocabulary)  # kept in the run folder, which the run's configuration names
    assert folder.cfg.data.vocabulary == str(folder.path / VOCABULARY_FILE)
    assert read_vocabulary(folder.path / VOCABULARY_FILE) == vocabulary
    assert load_config(to_flat(folder.cfg)) == folder.cfg and task_info(folder.cfg.data).label_names == vocabulary

    # a site without the file takes the words of the server's messages
    instructions = ConfigRecord(vocabulary_instructions(folder.cfg))
    site_plan_ = message_plan(RunPlan.of(cfg), instructions)
    site_cfg = site_plan_.config
    assert task_info(site_cfg.data).label_names == vocabulary
    assert site_cfg.data.vocabulary.startswith(str(tmp_path / "cache"))
    assert message_plan(RunPlan.of(cfg), instructions).vocabulary == site_plan_.vocabulary  # the same file every message
    assert message_plan(site_plan_, instructions) == site_plan_  # and nothing more to learn once it has it
    model = new_model(folder.cfg)
    content = RecordDict({ARRAYS: ArrayRecord(trainable_state(model)), CONFIG: instructions})
    context = WordCountSites(flat, 2).contexts[101]
    answer = client_app.app(instruction("evaluate", content, 101), context)
    assert not answer.has_error() and np.isfinite(answer.content[METRICS]["cider"])


class DeployedSites(WordCountSites):
    """Deployed SuperNodes as omnirad-client starts them (the site's file, task and cache in its node
    config); node 100 + i is site i. Keeps which nodes were asked."""

    def __init__(self, run_config: dict, files: list, tasks: list[tuple[str, str]], cache) -> None:
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config=run_config,
                                          node_config={NODE_SITE_ID: i, NODE_DATA_FILE: str(file), NODE_WEIGHTS: "",
                                                       NODE_CACHE_DIR: str(cache / f"site-{i}"), NODE_TASK_NAME: name,
                                                       NODE_TASK_KIND: kind, NODE_NUM_CLASSES: 0 if kind == "captioning" else 4})
                         for i, (file, (name, kind)) in enumerate(zip(files, tasks, strict=True))}
        self.asked: list[int] = []

    def send_and_receive(self, messages, timeout=None):
        self.asked += [msg.metadata.dst_node_id for msg in messages]
        return super().send_and_receive(messages, timeout)


@pytest.mark.parametrize("secure", [False, True])
def test_a_deployed_captioning_group_counts_its_vocabulary_at_its_own_sites_only(tmp_path, task_identity, secure):
    """Under privacy.secure-sum the group's counts are a secure sum among the group's own two sites."""
    paths, _ = two_sites(tmp_path)
    flat = {"data.dataset": "deployment", "multitask.site-tasks": "declared", "model.adapter": "mlp",
            "model.encoder": "vit-tiny", "data.size": 28, "data.num-sites": 3, "model.cache-dir": str(tmp_path / "server"),
            "privacy.secure-sum": secure}
    cfg = load_config(flat)
    sites = DeployedSites(flat, [*paths, tmp_path / "region.npz"],
                          [("captions", "captioning"), ("captions", "captioning"), ("region", "multi-class")],
                          tmp_path / "cache")
    declared = {node: (node - 100, declaration(str(context.node_config["task-name"]), site_of(context)[0].data))
                for node, context in sites.contexts.items()}
    assert declared[100][1].spec == TaskSpec("captioning", ())  # no words yet: the run counts them
    groups = group_sites(declared, None)

    counted, entries = group_vocabularies(sites, cfg, groups)
    assert sorted(sites.asked) == sorted([100, 101] * (3 if secure else 1))  # words (keys, masked): never the region site
    assert set(entries) == {"captions"} and set(entries["captions"]["bytes-per-site"]) == {"site 0", "site 1"}
    assert ("secure-sum" in entries["captions"]) == secure
    vocabulary = counted["captions"].spec.label_names
    views = [site_of(sites.contexts[node])[0] for node in (100, 101)]
    assert vocabulary == federated_vocabulary(SiteWordCounts.of(training_captions(view.data, site, seed=view.run.seed), 2)
                                              for site, view in enumerate(views))
    assert {"chest", "pelvis"} <= set(vocabulary) and "john" not in vocabulary and counted["region"] == groups["region"]

    server_view = task_config(cfg, "captions", counted["captions"].spec)  # the server's copy, in its cache folder
    assert task_info(server_view.data).label_names == vocabulary
    instructions = ConfigRecord(vocabulary_instructions(server_view))
    site_cfg, _ = site_of(sites.contexts[101])
    context = sites.contexts[101]
    plan, site_id = site_plan(context)
    assert site_cfg.data.vocabulary == "" and task_name(plan, site_id, context.node_config) == "captions"
    taken = task_view(message_plan(plan, instructions), site_id, context.node_config)
    assert task_info(taken.data).label_names == vocabulary
    assert taken.data.vocabulary.startswith(str(tmp_path / "cache" / "site-1"))


def test_a_site_checks_its_caption_file_without_a_vocabulary_file(tmp_path):
    site_file = SiteConfig()
    site_file.data.file, site_file.data.task = str(write_site(tmp_path / "a", CAPTIONS * 3)), "captioning"
    report = check_data(site_file)
    assert report == "captions.csv: 11 train, 1 val images (captioning, 16 distinct words)"  # the comma is a word


# --- privacy.secure-sum: words as in the clear, counts only as their sum -------------------------------

def three_sites(tmp_path) -> list:
    """Site 2 uses 'mass' and 'head' once each, below the threshold, while sites 0 and 1 send them:
    its count of each must stay out of the sum as it stays out of the plain replies. Only site 2
    sends 'sinus'."""
    paths, _ = two_sites(tmp_path)
    third = ["Chest CT with a nodule", "chest CT with a nodule", "Head mass", "Sinus CT", "sinus", "CT"]
    return [*paths, write_site(tmp_path / "c", third, ["train"] * 5 + ["val"])]


class Recording(WordCountSites):
    """The sites' real handlers, keeping every reply the server receives; ``drop``: a node that
    fails ``query.secure_sum_masked`` (it dropped after the keys), ``alter``: applied to masked words."""

    def __init__(self, run_config, num_sites, drop=None, alter=None):
        super().__init__(run_config, num_sites)
        self.replies, self.drop, self.alter = [], drop, alter

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg, answer in zip(messages, super().send_and_receive(messages, timeout), strict=True):
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            if kind == "query.secure_sum_masked" and node == self.drop:
                answer = Message(Error(code=0, reason="site crashed"), reply_to=answer)
            elif kind == "query.secure_sum_masked" and self.alter is not None and node == 101:
                answer.content[ARRAYS]["masked"] = Array(self.alter(answer.content[ARRAYS]["masked"].numpy()))
            self.replies.append((node, kind, answer))
            replies.append(answer)
        return replies


@pytest.mark.parametrize("limits", [{}, {"data.vocabulary-min-count": 1}, {"data.vocabulary-max-words": 6}])
def test_the_secure_word_count_gives_the_plain_vocabulary_and_the_server_never_sees_a_sites_counts(
        tmp_path, task_identity, limits):
    flat = caption_run(tmp_path, three_sites(tmp_path), **limits)
    plain, plain_entry = gather_vocabulary(WordCountSites(flat, 3), load_config(flat))
    secure_flat = {**flat, "privacy.secure-sum": True}
    cfg = load_config(secure_flat)  # no longer refused at startup
    sites = Recording(secure_flat, 3)
    vocabulary, entry = gather_vocabulary(sites, cfg)
    assert vocabulary == plain and entry["words"] == plain_entry["words"]
    assert entry["secure-sum"] == {"sites": 3, "restarts": 0, "dropped-nodes": []}
    # the summed counts are exactly the plain replies' sum: a site's count below the threshold stays out
    site_counts = [SiteWordCounts.of(training_captions(cfg.data, s, seed=cfg.run.seed), cfg.data.vocabulary_min_count) for s in range(3)]
    counted, _, _ = secure_counts(Recording(secure_flat, 3), cfg)
    assert counted[0].counts == dict(sum((Counter(c.counts) for c in site_counts), Counter()))
    if cfg.data.vocabulary_min_count == 2:
        assert {"mass", "head"} <= set(site_counts[0].counts) and not {"mass", "head"} & set(site_counts[2].counts)
    # what the server receives: each site's words (as in the clear), then a public key and bounds, then
    # 64-bit words that are not its counts; no count of one site anywhere
    kinds = [kind for _, kind, _ in sites.replies]
    assert kinds == ["query.word_counts"] * 3 + ["query.secure_sum_keys"] * 3 + ["query.secure_sum_masked"] * 3
    union = sorted(set().union(*(c.counts for c in site_counts)))
    for node, kind, answer in sites.replies:
        own = site_counts[node - 100]
        assert set(answer.content[METRICS]) <= {SITE_ID}
        if kind == "query.word_counts":
            assert dict(answer.content[WORD_COUNTS]) == {"words": sorted(own.counts)}
        elif kind == "query.secure_sum_keys":
            assert set(answer.content) == {SECURE_SUM, METRICS} and answer.content[SECURE_SUM]["sizes"] == [len(union)]
        else:
            masked = answer.content[ARRAYS]["masked"].numpy()
            assert masked.dtype == np.uint64 and masked.shape == (len(union) + ss.CHECK_WORDS,)
            exponent = ss.exponent_of(own.count_vector(union))
            assert not (masked[:len(union)] == ss.encode(own.count_vector(union), exponent, 3)).any()
    assert set(entry) == {"words", "min-count", "max-words", "bytes-per-site", "secure-sum", "seconds"}


def test_a_site_dropping_after_the_keys_leaves_the_vocabulary_of_the_others(tmp_path, task_identity):
    """One restart without site 2: its words are in the union the others counted on, but no longer
    in the vocabulary unless another site sent them (their summed counts are checked to be 0)."""
    paths = three_sites(tmp_path)
    flat = {**caption_run(tmp_path, paths), "privacy.secure-sum": True}
    cfg = load_config(flat)
    vocabulary, entry = gather_vocabulary(Recording(flat, 3, drop=102), cfg)
    assert entry["secure-sum"] == {"sites": 2, "restarts": 1, "dropped-nodes": [102]}
    assert set(entry["bytes-per-site"]) == {"site 0", "site 1"}
    assert vocabulary == federated_vocabulary(SiteWordCounts.of(training_captions(cfg.data, s, seed=cfg.run.seed), 2) for s in (0, 1))
    assert SiteWordCounts.of(training_captions(cfg.data, 2, seed=cfg.run.seed), 2).counts["sinus"] == 2 and "sinus" not in vocabulary


def test_a_tampered_count_fails_the_sum_naming_the_phase_not_a_site(tmp_path, task_identity):
    flat = {**caption_run(tmp_path, three_sites(tmp_path)), "privacy.secure-sum": True}
    with pytest.raises(RuntimeError, match=r"^caption vocabulary: the secure sum fails its checks: the summed count "
                                           r"of '.*' is .*(whole|not)") as err:
        gather_vocabulary(Recording(flat, 3, alter=lambda w: w + np.uint64(1 << 40) * (np.arange(len(w)) == 0)),
                          load_config(flat))
    assert "site 1" not in str(err.value) and "101" not in str(err.value)


def test_a_site_refuses_a_union_that_lacks_its_words_and_the_server_refuses_counts_in_the_clear():
    counts = SiteWordCounts({"ct": 3, "mass": 2})
    np.testing.assert_array_equal(counts.count_vector(["chest", "ct", "mass"]), [0.0, 3.0, 2.0])
    for union, message in ((["ct"], "lacks 1 word"), (["mass", "ct"], "not sorted"), (["ct", "ct", "mass"], "twice"),
                           ("ct mass", "a list"), (["ct", "Mass"], "'Mass' is not a word")):
        with pytest.raises(ValueError, match=message):
            counts.count_vector(union)
    assert site_words(counts.words_record()) == {"ct", "mass"}
    with pytest.raises(ValueError, match="in the clear; under privacy.secure-sum"):
        site_words(counts.to_record())
    for summed, message in (([2.5, 4.0], "'ct' is 2.5"), ([1.0, 4.0], "'ct' is 1"), ([2.0, 4.0, 1.0], "3 summed")):
        with pytest.raises(ValueError, match=message):
            pooled_counts(["ct", "mass"], np.array(summed), [frozenset({"ct"}), frozenset({"ct", "mass"})], min_count=2)
    assert pooled_counts(["ct", "mass"], np.array([5.0, 0.0]), [frozenset({"ct"})], min_count=2).counts == {"ct": 5}
    with pytest.raises(ValueError, match="'mass' is 2; 0 site"):  # a word only a site left out of the sum sent
        pooled_counts(["ct", "mass"], np.array([5.0, 2.0]), [frozenset({"ct"})], min_count=2)
