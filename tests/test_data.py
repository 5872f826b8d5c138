"""Tests of bayesprompt.data: registry, loaders, few-shot sampling."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bayesprompt.data import (
    TASKS,
    DataError,
    Example,
    HubSource,
    Task,
    balanced_subsample,
    few_shot_split,
    get_task,
    load_hub,
    load_jsonl,
    load_split,
    resolve_data_dir,
    split_path,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts are JSON-encoded, strings written verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pool_of(counts: dict[int, int]) -> list[Example]:
    """A pool with ``counts[c]`` distinct examples of class ``c``."""
    return [Example(f"c{c} #{i}", c) for c, n in counts.items() for i in range(n)]


# --------------------------------------------------------------------------- registry


def test_registry_has_the_seven_builtin_tasks():
    assert set(TASKS) == {"sst2", "imdb", "agnews", "dbpedia", "mrpc", "rte", "snli"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_builtin_task_is_consistent(name):
    task = TASKS[name]
    assert task.name == name
    assert len(task.encoder_verbalizers) == task.num_classes
    assert len(task.mlm_verbalizers) == task.num_classes
    assert len(set(task.label_names)) == task.num_classes
    assert len(set(task.mlm_verbalizers)) == task.num_classes
    assert len(set(task.encoder_verbalizers)) == task.num_classes
    assert all(w == w.strip() and " " not in w for w in task.mlm_verbalizers)
    assert "{mask}" in task.mlm_template and "{text}" in task.mlm_template
    assert ("{text_pair}" in task.mlm_template) == task.is_pair
    assert task.hub is not None
    assert (task.hub.pair_field is not None) == task.is_pair
    assert "train" in task.hub.splits and "test" in task.hub.splits
    assert hash(task) == hash(TASKS[name])  # hashable despite HubSource.splits being a dict
    assert pickle.loads(pickle.dumps(task)) == task


def test_registry_label_orders_and_verbalizers():
    assert get_task("sst2").label_names == ("negative", "positive")
    assert get_task("imdb").label_names == ("neg", "pos")
    assert get_task("agnews").label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert get_task("snli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("mrpc").label_names == ("not_equivalent", "equivalent")
    assert get_task("dbpedia").label_names[0] == "Company"
    assert get_task("dbpedia").label_names[13] == "WrittenWork"
    assert get_task("dbpedia").num_classes == 14
    for name in ("sst2", "imdb"):
        assert get_task(name).encoder_verbalizers == ("It was terrible.", "It was great.")
        assert get_task(name).mlm_verbalizers == ("bad", "great")
    assert get_task("sst2").mlm_template == "{text} It was {mask} ."
    assert get_task("agnews").mlm_template == "{mask} News: {text}"
    assert get_task("agnews").mlm_verbalizers == ("World", "Sports", "Business", "Tech")
    assert get_task("dbpedia").mlm_template == "[Category: {mask}] {text}"
    assert get_task("mrpc").mlm_verbalizers == ("No", "Yes")
    assert get_task("rte").mlm_verbalizers == ("Yes", "No")
    assert get_task("snli").mlm_verbalizers == ("Yes", "Maybe", "No")
    assert get_task("mrpc").metric == "f1"
    assert {t.metric for n, t in TASKS.items() if n != "mrpc"} == {"accuracy"}
    assert {n for n, t in TASKS.items() if t.is_pair} == {"mrpc", "rte", "snli"}


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        TASKS["mine"] = TASKS["sst2"]  # type: ignore[index]


def test_get_task_passes_a_task_through():
    custom = Task("spam", ("ham", "spam"), ("a.", "b."), "{text} {mask}", ("ham", "spam"))
    assert get_task(custom) is custom
    assert get_task("rte") is TASKS["rte"]


def test_get_task_unknown_name_lists_known_tasks():
    with pytest.raises(ValueError, match="unknown task 'sst-2'") as info:
        get_task("sst-2")
    for name in TASKS:
        assert name in str(info.value)


def test_get_task_rejects_other_types():
    with pytest.raises(TypeError, match="int"):
        get_task(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- resolve_data_dir


def test_resolve_data_dir_prefers_argument(tmp_path, monkeypatch):
    other = tmp_path / "env"
    other.mkdir()
    monkeypatch.setenv("BAYESPROMPT_DATA", str(other))
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path


def test_resolve_data_dir_uses_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESPROMPT_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir() == tmp_path


@pytest.mark.parametrize("value", [None, ""])
def test_resolve_data_dir_without_any_source_explains_both(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("BAYESPROMPT_DATA", raising=False)
    else:
        monkeypatch.setenv("BAYESPROMPT_DATA", value)
    with pytest.raises(ValueError, match="data_dir") as info:
        resolve_data_dir(None)
    assert "BAYESPROMPT_DATA" in str(info.value)


def test_resolve_data_dir_missing_directory(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data_dir(missing)
    monkeypatch.setenv("BAYESPROMPT_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match="BAYESPROMPT_DATA") as info:
        resolve_data_dir(None)
    assert str(missing) in str(info.value)


def test_resolve_data_dir_rejects_a_file(tmp_path):
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(NotADirectoryError, match="f.txt"):
        resolve_data_dir(file)


# --------------------------------------------------------------------------- load_jsonl


def test_load_jsonl_single_sentence(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "a fine film ", "label": 1, "label_name": "positive"},
            "",
            "   ",
            {"text": "dull", "label": 0},
            {"text": "meh", "label": 0, "label_name": None, "text_pair": None},
        ],
    )
    assert load_jsonl(path, "sst2") == [
        Example("a fine film ", 1),
        Example("dull", 0),
        Example("meh", 0),
    ]


def test_load_jsonl_pair_task(tmp_path):
    path = write_jsonl(
        tmp_path / "dev.jsonl",
        [
            {"text": "A man sleeps.", "text_pair": "A person rests.", "label": 0},
            {"text": "A dog runs.", "text_pair": "A cat sits.", "label": 2, "label_name": "contradiction"},
        ],
    )
    examples = load_jsonl(str(path), get_task("snli"))
    assert examples == [
        Example("A man sleeps.", 0, "A person rests."),
        Example("A dog runs.", 2, "A cat sits."),
    ]


def test_load_jsonl_for_prediction_makes_labels_optional_but_checks_given_ones(tmp_path):
    from bayesprompt.data import UNLABELLED

    rows = [{"text": "P.", "text_pair": "H."}, {"text": "P2.", "text_pair": "H2.", "label": 1, "label_name": "neutral"}]
    path = write_jsonl(tmp_path / "inputs.jsonl", rows)
    assert load_jsonl(path, "snli", labelled=False) == [Example("P.", UNLABELLED, "H."), Example("P2.", 1, "H2.")]
    with pytest.raises(DataError, match="line 1: missing field 'label'"):
        load_jsonl(path, "snli")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "P.", "text_pair": "H.", "label": 1, "label_name": "entailment"}])
    with pytest.raises(DataError, match="line 1: field 'label_name'"):
        load_jsonl(bad, "snli", labelled=False)
    nameonly = write_jsonl(tmp_path / "nameonly.jsonl", [{"text": "P.", "text_pair": "H.", "label_name": "neutral"}])
    with pytest.raises(DataError, match="line 1: field 'label_name' is given without 'label'"):
        load_jsonl(nameonly, "snli", labelled=False)
    with pytest.raises(DataError, match="line 1: missing field 'text_pair'"):
        load_jsonl(write_jsonl(tmp_path / "nopair.jsonl", [{"text": "P."}]), "snli", labelled=False)


def test_load_jsonl_accepts_a_utf8_bom(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "caf\u00e9", "label": 1}).encode() + b"\n")
    assert load_jsonl(path, "sst2") == [Example("caf\u00e9", 1)]


GOOD = {"text": "ok", "label": 0}
GOOD_PAIR = {"text": "ok", "text_pair": "fine", "label": 0}

BAD_ROWS = [
    # (task, bad row, fragments the message must contain)
    ("sst2", '{"text": "broken", "label": 1', ["invalid JSON"]),
    ("sst2", "[1, 2]", ["JSON object", "list"]),
    ("sst2", {"label": 1}, ["missing field 'text'"]),
    ("sst2", {"text": None, "label": 1}, ["missing field 'text'"]),
    ("sst2", {"text": 5, "label": 1}, ["'text'", "string", "int"]),
    ("sst2", {"text": "   \t", "label": 1}, ["'text'", "empty"]),
    ("sst2", {"text": "", "label": 1}, ["'text'", "empty"]),
    ("sst2", {"text": "x"}, ["missing field 'label'"]),
    ("sst2", {"text": "x", "label": "1"}, ["'label'", "integer", "'1'"]),
    ("sst2", {"text": "x", "label": 1.0}, ["'label'", "integer", "1.0"]),
    ("sst2", {"text": "x", "label": True}, ["'label'", "integer", "True"]),
    ("sst2", {"text": "x", "label": 2}, ["'label'", "out of range", "2 classes"]),
    ("sst2", {"text": "x", "label": -1}, ["'label'", "out of range"]),
    ("agnews", {"text": "x", "label": 4}, ["'label'", "out of range", "4 classes"]),
    ("sst2", {"text": "x", "label": 1, "label_name": "negative"}, ["'label_name'", "'negative'", "'positive'"]),
    ("sst2", {"text": "x", "label": 0, "text_pair": "y"}, ["'text_pair'", "single-sentence"]),
    ("rte", {"text": "x", "label": 0}, ["missing field 'text_pair'"]),
    ("rte", {"text": "x", "text_pair": " ", "label": 0}, ["'text_pair'", "empty"]),
    ("rte", {"text": "x", "text_pair": None, "label": 0}, ["missing field 'text_pair'"]),
]


@pytest.mark.parametrize(("task_name", "bad", "fragments"), BAD_ROWS)
def test_load_jsonl_bad_row_names_file_line_and_field(tmp_path, task_name, bad, fragments):
    good = GOOD_PAIR if get_task(task_name).is_pair else GOOD
    # the bad row is on line 4: lines 1-2 are good, line 3 is blank
    path = write_jsonl(tmp_path / "broken_file.jsonl", [good, good, "", bad, good])
    with pytest.raises(DataError) as info:
        load_jsonl(path, task_name)
    message = str(info.value)
    assert str(path) in message
    assert "line 4" in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ValueError)


def test_load_jsonl_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl.*no examples"):
        load_jsonl(path, "sst2")


def test_load_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.jsonl' does not exist"):
        load_jsonl(tmp_path / "absent.jsonl", "sst2")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_jsonl(tmp_path, "sst2")


def test_load_jsonl_names_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n\r\n" + good + b"\r\n" + json.dumps({"text": "caf\u00e9", "label": 0}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 4: not UTF-8 text \(invalid continuation byte"):
        load_jsonl(path, "sst2")
    path.write_bytes(good + b"\r\n\n" + good + b"\r" + good)  # blank lines skipped, any line ending
    assert load_jsonl(path, "sst2") == [Example("ok", 0)] * 3


def test_load_jsonl_custom_task_label_names(tmp_path):
    task = Task("spam", ("ham", "spam"), ("a.", "b."), "{text} {mask}", ("ham", "spam"))
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "buy now", "label": 1, "label_name": "spam"}])
    assert load_jsonl(path, task) == [Example("buy now", 1)]
    write_jsonl(path, [{"text": "hi", "label": 1, "label_name": "ham"}])
    with pytest.raises(DataError, match="line 1.*'ham'"):
        load_jsonl(path, task)


# --------------------------------------------------------------------------- load_split


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    write_jsonl(root / "sst2" / "train.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    write_jsonl(root / "sst2" / "test.jsonl", [{"text": "fine", "label": 1}])
    write_jsonl(root / "dbpedia" / "train.jsonl", [{"text": "Acme Corp is a company.", "label": 0}])
    write_jsonl(root / "dbpedia" / "proxy_test.jsonl", [{"text": "A village.", "label": 8, "label_name": "Village"}])
    return root


def test_load_split_reads_the_task_folder(data_dir):
    assert load_split("sst2", "train", data_dir) == [Example("good", 1), Example("bad", 0)]
    assert load_split(get_task("sst2"), "test", str(data_dir)) == [Example("fine", 1)]


def test_load_split_uses_env_var(data_dir, monkeypatch):
    monkeypatch.setenv("BAYESPROMPT_DATA", str(data_dir))
    assert load_split("sst2", "test") == [Example("fine", 1)]


def test_load_split_unknown_split(data_dir):
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, dev, test"):
        load_split("sst2", "validation", data_dir)


def test_load_split_missing_file_names_path(data_dir):
    with pytest.raises(FileNotFoundError) as info:
        load_split("sst2", "dev", data_dir)
    assert str(data_dir / "sst2" / "dev.jsonl") in str(info.value)
    with pytest.raises(FileNotFoundError, match="rte"):
        load_split("rte", "train", data_dir)


def test_load_split_proxy_test_requires_opt_in(data_dir):
    with pytest.raises(FileNotFoundError) as info:
        load_split("dbpedia", "test", data_dir)
    message = str(info.value)
    assert "official test" in message and "proxy_test.jsonl" in message and "allow_proxy=True" in message
    assert load_split("dbpedia", "test", data_dir, allow_proxy=True) == [Example("A village.", 8)]


def test_load_split_official_test_wins_over_proxy(data_dir):
    write_jsonl(data_dir / "dbpedia" / "test.jsonl", [{"text": "An album.", "label": 11}])
    assert load_split("dbpedia", "test", data_dir, allow_proxy=True) == [Example("An album.", 11)]


def test_split_path_names_the_proxy_it_falls_back_to(data_dir):
    assert split_path("dbpedia", "test", data_dir, allow_proxy=True).stem == "proxy_test"
    assert split_path("dbpedia", "train", data_dir).stem == "train"
    write_jsonl(data_dir / "dbpedia" / "test.jsonl", [{"text": "An album.", "label": 11}])
    assert split_path("dbpedia", "test", data_dir, allow_proxy=True).stem == "test"
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        split_path("dbpedia", "valid", data_dir)


def test_load_split_proxy_is_only_for_test(data_dir):
    with pytest.raises(FileNotFoundError, match="dev.jsonl"):
        load_split("dbpedia", "dev", data_dir, allow_proxy=True)


def test_load_split_propagates_data_errors(data_dir):
    write_jsonl(data_dir / "sst2" / "dev.jsonl", [{"text": "x", "label": 7}])
    with pytest.raises(DataError, match=r"dev\.jsonl, line 1: field 'label' = 7"):
        load_split("sst2", "dev", data_dir)


# --------------------------------------------------------------------------- load_hub


class FakeLoadDataset:
    """Stand-in for ``datasets.load_dataset`` that records its calls."""

    def __init__(self, rows):
        self.rows = rows
        self.calls = []

    def __call__(self, path, name=None, *, split):
        self.calls.append((path, name, split))
        return self.rows


def test_load_hub_single_sentence_with_dataset_object(monkeypatch):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict(
        {"content": [" Acme is a firm.", " Foo is a plant."], "title": ["Acme", "Foo"], "label": [0, 10]}
    )
    fake = FakeLoadDataset(table)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    examples = load_hub("dbpedia", "test")
    hub = get_task("dbpedia").hub
    assert fake.calls == [(hub.path, hub.name, "test")]
    assert examples == [Example("Acme is a firm.", 0), Example("Foo is a plant.", 10)]


def test_load_hub_pair_task_maps_splits_and_drops_unlabelled(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": 0},
        {"premise": "No gold.", "hypothesis": "Dropped.", "label": -1},
        {"premise": "A dog runs.", "hypothesis": "A cat sits.", "label": 2},
    ]
    fake = FakeLoadDataset(rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_hub("snli", "dev") == [
        Example("A man sleeps.", 0, "A person rests."),
        Example("A dog runs.", 2, "A cat sits."),
    ]
    assert fake.calls[-1][2] == "validation"
    fake.rows = [{"sentence1": "It rains.", "sentence2": "It is wet.", "label": 0, "idx": 0}]
    assert load_hub("rte", "test") == [Example("It rains.", 0, "It is wet.")]  # GLUE validation
    assert fake.calls[-1] == ("nyu-mll/glue", "rte", "validation")


def test_load_hub_glue_sentence_field(monkeypatch):
    datasets = pytest.importorskip("datasets")
    fake = FakeLoadDataset([{"sentence": "it 's a charming journey . ", "label": 1, "idx": 0}])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_hub(get_task("sst2"), "train") == [Example("it 's a charming journey . ", 1)]
    assert fake.calls == [("nyu-mll/glue", "sst2", "train")]


def test_load_hub_bad_row_names_source_and_row(monkeypatch):
    datasets = pytest.importorskip("datasets")
    fake = FakeLoadDataset([{"text": "ok", "label": 0}, {"text": "ok", "label": 9}])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(DataError, match=r"fancyzhx/ag_news.*'test'.*row 1.*'label' = 9.*out of range"):
        load_hub("agnews", "test")


def test_load_hub_all_unlabelled_is_an_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", FakeLoadDataset([{"sentence": "x", "label": -1}]))
    with pytest.raises(DataError, match="no labelled examples"):
        load_hub("sst2", "test")


def test_load_hub_unknown_split_or_no_source(monkeypatch):
    datasets = pytest.importorskip("datasets")
    fake = FakeLoadDataset([])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(ValueError, match="no hub split for 'dev'.*test, train"):
        load_hub("sst2", "dev")
    offline = Task("spam", ("ham", "spam"), ("a.", "b."), "{text} {mask}", ("ham", "spam"))
    with pytest.raises(ValueError, match="no Hugging Face hub source"):
        load_hub(offline, "train")
    custom = Task(
        "spam", ("ham", "spam"), ("a.", "b."), "{text} {mask}", ("ham", "spam"),
        hub=HubSource("me/spam", splits={"train": "train"}, text_field="body"),
    )
    fake.rows = [{"body": "win money", "label": 1}]
    assert load_hub(custom, "train") == [Example("win money", 1)]
    assert fake.calls == [("me/spam", None, "train")]


# --------------------------------------------------------------------------- few_shot_split


def test_few_shot_split_sizes_balance_and_disjointness():
    pool = pool_of({0: 40, 1: 35, 2: 50})
    train, dev = few_shot_split(pool, num_classes=3, k=8, dev_k=5, seed=1)
    assert Counter(e.label for e in train) == {0: 8, 1: 8, 2: 8}
    assert Counter(e.label for e in dev) == {0: 5, 1: 5, 2: 5}
    assert len(set(train)) == len(train) and len(set(dev)) == len(dev)
    assert set(train).isdisjoint(dev)
    assert set(train) | set(dev) <= set(pool)


def test_few_shot_split_disjoint_by_position_even_with_duplicate_texts():
    pool = [Example("same", i % 2) for i in range(20)]  # identical examples
    train, dev = few_shot_split(pool, num_classes=2, k=5, dev_k=5, seed=3)
    assert len(train) == len(dev) == 10  # all 10 per class used, none twice


def test_few_shot_split_dev_k_defaults_to_k():
    train, dev = few_shot_split(pool_of({0: 40, 1: 40}), num_classes=2, k=16)
    assert len(train) == len(dev) == 32


def test_few_shot_split_zero_dev():
    train, dev = few_shot_split(pool_of({0: 3, 1: 3}), num_classes=2, k=3, dev_k=0)
    assert dev == [] and len(train) == 6


def test_few_shot_split_is_deterministic_and_seed_dependent():
    pool = pool_of({0: 60, 1: 60, 2: 60})
    first = few_shot_split(pool, 3, k=16, seed=7)
    assert first == few_shot_split(list(pool), 3, k=16, seed=7)
    other = few_shot_split(pool, 3, k=16, seed=8)
    assert set(first[0]) != set(other[0])


def test_few_shot_split_output_is_shuffled_not_grouped():
    pool = pool_of({0: 50, 1: 50})
    train, _ = few_shot_split(pool, 2, k=16, seed=0)
    labels = [e.label for e in train]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)
    # position order is shuffled too, not the pool order
    positions = [pool.index(e) for e in train]
    assert positions != sorted(positions)


def test_few_shot_split_train_is_stable_in_dev_k_and_nested_in_k():
    pool = pool_of({0: 60, 1: 60})
    train_a, _ = few_shot_split(pool, 2, k=16, dev_k=0, seed=5)
    train_b, _ = few_shot_split(pool, 2, k=16, dev_k=20, seed=5)
    assert train_a == train_b
    small, _ = few_shot_split(pool, 2, k=4, seed=5)
    assert set(small) <= set(train_a)


def test_few_shot_split_does_not_mutate_the_pool():
    pool = pool_of({0: 20, 1: 20})
    before = list(pool)
    few_shot_split(pool, 2, k=4, seed=0)
    assert pool == before


def test_few_shot_split_insufficient_class_names_class_and_counts():
    pool = pool_of({0: 40, 1: 20, 2: 31})
    with pytest.raises(ValueError) as info:
        few_shot_split(pool, num_classes=3, k=16, seed=0)
    message = str(info.value)
    assert "class 1 has 20" in message and "class 2 has 31" in message
    assert "class 0" not in message
    assert "32" in message
    # exactly enough is fine
    train, dev = few_shot_split(pool_of({0: 32, 1: 32, 2: 32}), 3, k=16)
    assert len(train) == len(dev) == 48


def test_few_shot_split_missing_class_is_reported():
    with pytest.raises(ValueError, match="class 2 has 0"):
        few_shot_split(pool_of({0: 10, 1: 10}), num_classes=3, k=2)


def test_few_shot_split_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="label 3"):
        few_shot_split(pool_of({0: 10, 3: 10}), num_classes=2, k=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 2, "dev_k": -1}, ValueError, "dev_k must be >= 0"),
        ({"k": 2.5}, TypeError, "k must be an integer"),
        ({"k": True}, TypeError, "k must be an integer"),
    ],
)
def test_few_shot_split_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        few_shot_split(pool_of({0: 10, 1: 10}), 2, **kwargs)


def test_few_shot_split_accepts_numpy_integers():
    train, dev = few_shot_split(pool_of({0: 10, 1: 10}), np.int64(2), k=np.int64(3), seed=0)
    assert len(train) == len(dev) == 6


# --------------------------------------------------------------------------- balanced_subsample


def test_balanced_subsample_balances_and_keeps_order():
    data = pool_of({0: 100, 1: 100, 2: 100})
    sub = balanced_subsample(data, 3, n=30, seed=0)
    assert Counter(e.label for e in sub) == {0: 10, 1: 10, 2: 10}
    positions = [data.index(e) for e in sub]
    assert positions == sorted(positions)
    assert sub == balanced_subsample(data, 3, n=30, seed=0)
    assert sub != balanced_subsample(data, 3, n=30, seed=1)


def test_balanced_subsample_remainder_and_small_classes():
    data = pool_of({0: 100, 1: 3, 2: 100})
    sub = balanced_subsample(data, 3, n=31, seed=0)
    counts = Counter(e.label for e in sub)
    assert len(sub) == 31 and counts[1] == 3 and {counts[0], counts[2]} == {14}
    uneven = balanced_subsample(pool_of({0: 50, 1: 50}), 2, n=7, seed=0)
    assert sorted(Counter(e.label for e in uneven).values()) == [3, 4]


@pytest.mark.parametrize("seed", range(20))
def test_balanced_subsample_is_max_min_fair(seed):
    rng = np.random.default_rng(seed)
    counts = {c: int(m) for c, m in enumerate(rng.integers(0, 30, size=5))}
    data = pool_of(counts)
    n = int(rng.integers(1, max(len(data), 2)))
    got = Counter(e.label for e in balanced_subsample(data, 5, n=n, seed=seed))
    assert sum(got.values()) == min(n, len(data))
    for a in counts:
        assert got[a] <= counts[a]
        if got[a] < counts[a]:  # a class that could take more is never short-changed
            assert all(got[a] >= got[b] - 1 for b in counts)


def test_balanced_subsample_returns_all_when_n_is_large():
    data = pool_of({0: 5, 1: 2})
    assert balanced_subsample(data, 2, n=7) == data
    assert balanced_subsample(data, 2, n=100) == data


def test_balanced_subsample_validation():
    with pytest.raises(ValueError, match="n must be >= 1"):
        balanced_subsample(pool_of({0: 5, 1: 5}), 2, n=0)
    with pytest.raises(ValueError, match="label 2"):
        balanced_subsample(pool_of({0: 5, 2: 5}), 2, n=3)


# --------------------------------------------------------------------------- real data


EXPECTED_SPLITS = {
    "sst2": ("train", "test"),
    "imdb": ("train", "test"),
    "agnews": ("train", "test"),
    "dbpedia": ("train",),
    "mrpc": ("train", "test"),
    "rte": ("train", "test"),
    "snli": ("train", "dev", "test"),
}


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2" / "train.jsonl").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.mark.parametrize("name", sorted(EXPECTED_SPLITS))
def test_real_data_loads_with_valid_labels(shared_data, name):
    task = get_task(name)
    train = load_split(task, "train", shared_data)
    assert len(train) > 0
    for split in EXPECTED_SPLITS[name]:
        examples = load_split(task, split, shared_data)
        assert len(examples) > 0
        labels = {e.label for e in examples}
        assert labels <= set(range(task.num_classes))
        assert all((e.text_pair is not None) == task.is_pair for e in examples)
    # every class is present in the pool and the standard 16-shot split is possible
    assert {e.label for e in train} == set(range(task.num_classes))
    few, dev = few_shot_split(train, task.num_classes, k=16, seed=13)
    assert len(few) == len(dev) == 16 * task.num_classes


def test_real_data_known_sizes(shared_data):
    assert len(load_split("sst2", "test", shared_data)) == 872
    assert len(load_split("rte", "test", shared_data)) == 277
    assert len(load_split("mrpc", "test", shared_data)) == 408
    assert len(load_split("agnews", "test", shared_data)) == 7600


def test_real_dbpedia_has_only_a_proxy_test(shared_data):
    with pytest.raises(FileNotFoundError, match="proxy"):
        load_split("dbpedia", "test", shared_data)
    proxy = load_split("dbpedia", "test", shared_data, allow_proxy=True)
    assert len(proxy) > 0
    assert Counter(e.label for e in proxy).keys() == set(range(14))


def test_real_data_via_env_var(shared_data, monkeypatch):
    monkeypatch.setenv("BAYESPROMPT_DATA", str(shared_data))
    assert len(load_split("snli", "dev")) > 0
