"""`stcstore verify`: committed chunks present and intact; probe refuses a run with missing chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _stc_helpers import cli
from stcstore.store import open_run

CHUNK = 8  # 30 rows -> windows of 8, 8, 8, 6


def _extract(model: Path, data: Path, store: Path) -> None:
    res = cli("extract", "--model", model, "--data", data, "--store", store, "--run", "r1", "--limit", 30,
              "--max-length", 32, "--chunk-rows", CHUNK, "--pool", "mean,last", "--no-progress")
    assert res.returncode == 0, res.stderr


def _values(store: Path) -> dict:
    r = open_run(store)
    return {(s, site, p): r.read(s, site, p) for s in r.splits for site in r.sites for p in r.pools}


def _one_line_exit2(res, *needles) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def store(tmp_path, tiny_model, review_csv) -> Path:
    path = tmp_path / "s.zarr"
    _extract(tiny_model("bert"), review_csv, path)
    return path


def test_new_store_arrays_carry_crc32c_after_the_codec(store):
    meta = json.loads((store / "r1" / "train" / "ffn" / "mean" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    assert names[-1] == "crc32c" and names[-2] == "blosc", names   # checksum covers the compressed bytes
    for per_row in ("row_id", "n_tokens"):
        meta = json.loads((store / "r1" / "train" / per_row / "zarr.json").read_text())
        assert meta["codecs"][-1]["name"] == "crc32c"


def test_intact_store_exit_0(store):
    res = cli("verify", "--store", store, "--no-progress")
    assert res.returncode == 0, res.stderr
    # tiny bert, 2 layers: (3 hidden + 2 ffn) x 2 pools x 4 windows, plus row_id and n_tokens x 4 windows
    assert "run r1: 4 committed windows, 48 chunks intact (checksums" in res.stdout, res.stdout


def test_deleted_chunk_exit_2_probe_refuses_repair_and_rerun_restore(store, tiny_model, review_csv):
    before = _values(store)
    # the chunk of layer 1, window 2 of ffn/mean: rows 16-23
    (store / "r1" / "train" / "ffn" / "mean" / "c" / "1" / "2" / "0").unlink()
    # zarr reads it as zeros: only the check can tell
    assert not open_run(store).read("train", "ffn", "mean", layer=1)[16:24].any()
    line = _one_line_exit2(cli("verify", "--store", store, "--no-progress"),
                           "train/ffn/mean window 2 (rows 16-23, layer 1): missing", "--repair")
    assert "chunks in" not in line  # exactly one damaged chunk
    _one_line_exit2(cli("probe", "--store", store, "--label", "label", "--no-progress"),
                    "damaged", "train/ffn/mean window 2")

    res = cli("verify", "--store", store, "--run", "r1", "--repair", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "forgot 1 window" in res.stderr
    assert not (store / "r1" / "_progress" / "train" / "w00000002.json").exists()
    assert (store / "r1" / "_progress" / "train" / "w00000001.json").exists()
    assert "INCOMPLETE: 3/4" in cli("verify", "--store", store, "--no-progress").stdout

    _extract(tiny_model("bert"), review_csv, store)  # the same command redoes window 2 only
    assert cli("verify", "--store", store, "--no-progress").returncode == 0
    after = _values(store)
    for key, values in before.items():
        np.testing.assert_array_equal(after[key], values, err_msg=str(key))


def test_flipped_bytes_exit_2(store):
    chunk = store / "r1" / "train" / "hidden" / "last" / "c" / "2" / "3" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, inside the compressed payload
    chunk.write_bytes(bytes(data))
    (store / "r1" / "train" / "ffn" / "last" / "c" / "0" / "1" / "0").unlink()
    _one_line_exit2(cli("verify", "--store", store, "--no-progress"),
                    "2 chunks in 2 windows, first train/ffn/last window 1 (rows 8-15, layer 0): missing")
    (store / "r1" / "_progress" / "train" / "w00000001.json").unlink()   # window 1 no longer committed
    _one_line_exit2(cli("verify", "--store", store, "--no-progress"),
                    "train/hidden/last window 3 (rows 24-29, layer 2): does not decode (ValueError: Stored and computed checksum")


def test_flipped_bit_in_per_row_array_exit_2(store):
    chunk = store / "r1" / "train" / "n_tokens" / "c" / "1"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0x01
    chunk.write_bytes(bytes(data))
    _one_line_exit2(cli("verify", "--store", store, "--no-progress"), "train/n_tokens window 1 (rows 8-15)")


def test_store_without_checksums_still_reads_and_verifies(tmp_path, tiny_model, review_csv, monkeypatch):
    """Stores written before the checksum codec (blosc zstd only) read and verify by existence + decoding."""
    from zarr.codecs import BloscCodec, BloscShuffle

    import stcstore.store.writer as writer

    monkeypatch.setattr(writer, "compressors", lambda codec: (BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle),))
    store = tmp_path / "old.zarr"
    _extract(tiny_model("bert"), review_csv, store)
    monkeypatch.undo()
    meta = json.loads((store / "r1" / "train" / "hidden" / "mean" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "blosc"
    res = cli("verify", "--store", store, "--no-progress")
    assert res.returncode == 0 and "no checksums" in res.stdout, (res.stdout, res.stderr)
    (store / "r1" / "train" / "hidden" / "mean" / "c" / "0" / "0" / "0").unlink()
    _one_line_exit2(cli("verify", "--store", store, "--no-progress"), "train/hidden/mean window 0 (rows 0-7, layer 0): missing")


@pytest.mark.parametrize("codec,name", [("zstd", "blosc"), ("none", None)])
def test_codec_option_recorded_in_array_metadata_same_numbers(tmp_path, tiny_model, review_csv, codec, name, store):
    other = tmp_path / f"{codec}.zarr"
    res = cli("extract", "--model", tiny_model("bert"), "--data", review_csv, "--store", other, "--run", "r1", "--limit", 30,
              "--max-length", 32, "--chunk-rows", CHUNK, "--pool", "mean,last", "--no-progress", "--codec", codec)
    assert res.returncode == 0, res.stderr
    codecs = json.loads((other / "r1" / "train" / "ffn" / "mean" / "zarr.json").read_text())["codecs"]
    names = [c["name"] for c in codecs[1:]]  # after the bytes serializer
    assert names == ([name] if name else []) + ["crc32c"], names
    if name == "blosc":
        assert codecs[1]["configuration"]["cname"] == "zstd"
    ref, got = _values(store), _values(other)   # store: the default lz4
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=str(key))
    # the codec is not part of the fingerprint
    assert open_run(other).fingerprint == open_run(store).fingerprint
    bad = cli("extract", "--model", tiny_model("bert"), "--data", review_csv, "--store", tmp_path / "x.zarr", "--codec", "gzip")
    _one_line_exit2(bad, "--codec", "lz4")
