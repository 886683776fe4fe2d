"""Store locations: local folders and fsspec URLs (memory:// here; S3 in test_store_s3.py)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from _stc_helpers import cli
from stcstore.errors import ConfigError, StoreLockedError, StoreNotFoundError
from stcstore.store.location import open_location, parse_storage_options
from stcstore.store.lock import WriterLock, break_lock
from stcstore.store.progress import commit_window, committed_windows, window_records


def _mem(name: str = "s") -> str:
    return f"memory://stc-{uuid.uuid4().hex[:8]}/{name}.zarr"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_location_operations_agree_locally_and_in_memory(kind, tmp_path):
    root = open_location(tmp_path / "s.zarr" if kind == "local" else _mem())
    assert root.is_local == (kind == "local")
    assert not root.exists() and root.children() == []
    (root / "a" / "x.json").write_text('{"v": 1}')
    (root / "a" / "b" / "y.bin").write_bytes(b"\x00" * 5)
    assert json.loads((root / "a" / "x.json").read_text()) == {"v": 1}
    assert root.children() == ["a"] and (root / "a").children() == ["b", "x.json"]
    assert (root / "a").is_dir() and (root / "a" / "x.json").is_file()
    assert root.files() == {"a/x.json": 8, "a/b/y.bin": 5}
    # exclusive create: refused when the object exists
    (root / "lock").create_exclusive(b"1")
    with pytest.raises(FileExistsError):
        (root / "lock").create_exclusive(b"2")
    assert (root / "lock").read_bytes() == b"1"
    # removing a tree but keeping a named file (a held lock)
    (root / "a" / "lock").write_bytes(b"L")
    (root / "a").remove_tree(keep=("lock",))
    assert (root / "a").files() == {"lock": 1}
    (root / "a").remove_tree()
    assert not (root / "a").exists()
    assert (root / "lock").remove() and not (root / "lock").remove()


def test_local_atomic_write_leaves_no_temp_file(tmp_path):
    loc = open_location(tmp_path) / "d" / "f.json"
    loc.write_text("one")
    loc.write_text("two")
    assert loc.read_text() == "two"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f.json"]


def test_file_url_is_a_local_folder(tmp_path):
    loc = open_location(f"file://{tmp_path}/s.zarr")
    assert loc.is_local and loc.local_path == tmp_path / "s.zarr"


def test_storage_options_parse_json_values_else_strings():
    opts = parse_storage_options(["anon=true", "endpoint_url=http://h:9000", "n=3", "client_kwargs={\"region_name\": \"eu\"}",
                                  "name=a=b"])
    assert opts == {"anon": True, "endpoint_url": "http://h:9000", "n": 3, "client_kwargs": {"region_name": "eu"},
                    "name": "a=b"}
    for bad in ("novalue", "=x"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_storage_options([bad])
    # dotted keys nest, as s3fs takes client_kwargs / config_kwargs
    loc = open_location(_mem(), parse_storage_options(["client_kwargs.region_name=eu", "client_kwargs.verify=false"]))
    assert dict(loc.storage_options) == {"client_kwargs": {"region_name": "eu", "verify": False}}


def test_progress_records_in_memory():
    run = open_location(_mem()) / "r"
    commit_window(run, "train", 3, {"rows": 8})
    commit_window(run, "train", 0, {"rows": 8})
    assert committed_windows(run, "train") == {0, 3}
    assert window_records(run, "train") == {0: {"rows": 8}, 3: {"rows": 8}}
    assert committed_windows(run, "test") == set()


def test_memory_lock_refuses_a_second_writer_and_hands_over_after_release(monkeypatch):
    monkeypatch.setenv("STCSTORE_LOCK_LEASE", "30")
    run = open_location(_mem()) / "r"
    first = WriterLock(run, "r").acquire()
    try:
        held = json.loads((run / "_writer.lock").read_text())
        assert held["token"] and held["lease_s"] == 30
        with pytest.raises(StoreLockedError, match=r"run 'r' is being written by pid \d+ on .*lease 30 s"):
            WriterLock(run, "r").acquire()
    finally:
        first.release()
    assert not (run / "_writer.lock").exists()
    WriterLock(run, "r").acquire().release()


def test_stale_memory_lock_taken_over_and_broken(monkeypatch):
    monkeypatch.setenv("STCSTORE_LOCK_LEASE", "30")
    run = open_location(_mem()) / "r"
    # what a writer killed with -9 leaves: a lock whose heartbeat stopped long ago
    dead = {"pid": 4242, "host": "node7", "token": "t", "heartbeat": 1.0, "lease_s": 30}
    (run / "_writer.lock").write_text(json.dumps(dead))
    lock = WriterLock(run, "r").acquire()
    assert json.loads((run / "_writer.lock").read_text())["token"] == lock._token
    lock.release()
    (run / "_writer.lock").write_text(json.dumps(dead))
    said = break_lock(run / "_writer.lock", "run 'r'")
    assert "removed the lock of pid 4242 on node7" in said
    assert not (run / "_writer.lock").exists()
    assert "no lock to break" in break_lock(run / "_writer.lock", "run 'r'")


def test_break_lock_refuses_a_live_holder(monkeypatch):
    monkeypatch.setenv("STCSTORE_LOCK_LEASE", "1.2")  # a heartbeat every 0.2 s
    run = open_location(_mem()) / "r"
    with WriterLock(run, "r"):
        with pytest.raises(StoreLockedError, match="alive"):
            break_lock(run / "_writer.lock", "run 'r'")
        assert (run / "_writer.lock").exists()


def test_local_break_lock_refuses_a_live_flock_and_passes_a_free_one(tmp_path):
    with WriterLock(tmp_path / "r", "r"):
        with pytest.raises(StoreLockedError, match="alive"):
            break_lock(tmp_path / "r" / "_writer.lock", "run 'r'")
    assert "no lock to break" in break_lock(tmp_path / "r" / "_writer.lock", "run 'r'")


def test_bad_lease_setting_is_a_config_error(monkeypatch):
    monkeypatch.setenv("STCSTORE_LOCK_LEASE", "soon")
    with pytest.raises(ConfigError, match="STCSTORE_LOCK_LEASE"):
        WriterLock(open_location(_mem()) / "r", "r")


def test_extract_and_read_a_memory_store(tiny_model, review_csv, tmp_path):
    """memory:// works in one process: extract, info, verify, the same numbers as a folder."""
    url = _mem()
    args = ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--run", "r1", "--limit", "24",
            "--chunk-rows", "8", "--max-length", "32", "--no-progress", "--site", "hidden", "--pool", "mean,last"]
    import fsspec
    from packaging.version import Version

    if Version(fsspec.__version__) < Version("2024.12"):
        # zarr wraps a synchronous file system such as memory:// only with newer fsspec: one clear line
        res = cli(*args, "--store", url)
        assert res.returncode == 2 and "pip install -U fsspec" in res.stderr
        return
    assert cli(*args, "--store", url).returncode == 0
    assert cli(*args, "--store", str(tmp_path / "l.zarr")).returncode == 0
    from stcstore.store import open_run

    mem, loc = open_run(url), open_run(tmp_path / "l.zarr")
    assert mem.is_complete() and mem.store_path == url
    for pool in ("mean", "last"):
        assert np.array_equal(mem.read("train", "hidden", pool), loc.read("train", "hidden", pool))
    assert np.array_equal(mem.n_tokens("train"), loc.n_tokens("train"))
    res = cli("verify", "--store", url)
    assert res.returncode == 0 and "3 committed windows" in res.stdout
    res = cli("info", "--store", url, "--json")
    summary = json.loads(res.stdout)
    assert summary["store"] == url and summary["runs"][0]["complete"]
    assert summary["bytes_on_disk"] > 0
    res = cli("rm", "--store", url, "--run", "r1")
    assert res.returncode == 0
    with pytest.raises(StoreNotFoundError):
        open_run(url, "r1")


def test_unknown_protocol_and_missing_store_are_one_line_errors():
    res = cli("info", "--store", "nosuchproto://b/x")
    assert res.returncode == 2 and "unknown protocol 'nosuchproto'" in res.stderr
    res = cli("info", "--store", _mem())
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = cli("info", "--store", _mem(), "--storage-option", "oops")
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr
    for res in (cli("info", "--store", "nosuchproto://b/x"), cli("info", "--store", _mem())):
        assert len([l for l in res.stderr.splitlines() if l.strip()]) == 1
