"""Spilled kept columns: scratch files read a row range at a time, and a probe that spills
everything reports exactly what one holding its columns in memory reports."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from stcstore.cli import app
from stcstore.probe import spill
from stcstore.probe.solvers.lazy import StandardizedColumns
from stcstore.probe.spill import RowFile, Scratch
from test_probe import C_GRID, ETA_GRID, build_store


def test_row_file_reads_rows_and_column_prefixes(tmp_path) -> None:
    a = (np.arange(37 * 11, dtype=np.float32).reshape(37, 11) / 7).astype(np.float16)
    f = RowFile.write(tmp_path / "a.raw", a)
    assert f.shape == (37, 11) and f.dtype == np.float16
    np.testing.assert_array_equal(f[5:20], a[5:20])
    np.testing.assert_array_equal(f[30:99], a[30:])        # a range past the end stops at the end
    prefix = f[:, :4]
    assert prefix.shape == (37, 4)
    np.testing.assert_array_equal(prefix[3:9], a[3:9, :4])
    np.testing.assert_array_equal(prefix[3:9][:, [2, 0]], a[3:9][:, [2, 0]])
    with pytest.raises(IndexError):
        f[[1, 2]]
    # a design over spilled blocks builds the rows an in-memory one builds
    mem = StandardizedColumns([(a[:, :4], np.ones(4), np.full(4, 2.0)), (a[:, 4:], np.zeros(7), np.ones(7))])
    g = RowFile.write(tmp_path / "b.raw", np.ascontiguousarray(a[:, 4:]))
    disk = StandardizedColumns([(prefix, np.ones(4), np.full(4, 2.0)), (g, np.zeros(7), np.ones(7))])
    np.testing.assert_array_equal(disk.rows(2, 30), mem.rows(2, 30))
    np.testing.assert_array_equal(disk.rows(0, 37, np.array([9, 1])), mem.rows(0, 37, np.array([9, 1])))


def test_scratch_spills_above_its_allowance_and_cleans_up(tmp_path, monkeypatch) -> None:
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"stcstore-probe-{int(dead.stdout)}-abc"      # a probe killed with -9 left it
    orphan.mkdir()
    alive = tmp_path / f"stcstore-probe-{os.getpid()}-xyz"           # a live probe's folder stays
    alive.mkdir()
    with Scratch(in_memory_bytes=100) as s:
        assert not s.spills(100) and s.spills(101)
        f = s.file(np.ones((3, 4), np.float16))
        folder = f.path.parent
        assert f.path.is_file() and folder.name.startswith(f"stcstore-probe-{os.getpid()}-")
        assert not orphan.exists() and alive.exists()
    assert not folder.exists()


def test_probe_spilling_everything_reports_the_same(tmp_path, monkeypatch) -> None:
    """Kept, refit and concat columns in scratch files: the identical search table and report."""
    store = build_store(tmp_path / "s.zarr", {"train": 500, "extra": 150})
    args = ["probe", "--store", str(store), "--label", "sentiment", "--split-column", "fold", "--c-grid", C_GRID,
            "--eta-grid", ETA_GRID, "--no-progress", "--no-plots", "--backend", "torch"]
    reports = {}
    made = []
    real_file = Scratch.file

    def counting(self, array, name="cols"):
        made.append(name)
        return real_file(self, array, name)

    for name, allowance in (("mem", 1 << 40), ("disk", 0)):
        monkeypatch.setattr(spill, "IN_MEMORY_BYTES", allowance)
        monkeypatch.setattr(Scratch, "file", counting)
        res = CliRunner().invoke(app, args + ["--name", name])
        assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
        exp = store / "run0" / "probes" / name
        reports[name] = (json.loads((exp / "report.json").read_text()), json.loads((exp / "search.json").read_text()))
        if name == "mem":
            assert made == []
    assert {"train", "val", "refit"} <= set(made)
    (mem, mem_search), (disk, disk_search) = reports["mem"], reports["disk"]
    assert disk_search == mem_search
    assert disk["baselines"]["all_layers_concat"] is not None   # the concat baseline spills too
    for key in ("stc", "baselines"):
        assert disk[key] == mem[key]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_stops_a_spill_with_what_to_do() -> None:
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    from stcstore.errors import ScratchSpaceError, UserError

    with pytest.raises(ScratchSpaceError) as info:
        RowFile.write("/dev/full", np.ones((64, 8), np.float16))
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)
    msg = str(info.value)
    assert "/dev" in msg and "1.0 KiB" in msg and "No space left" in msg and "TMPDIR" in msg and "rerun the same command" in msg, msg


def test_a_spill_larger_than_the_free_space_is_refused_before_it_writes() -> None:
    from stcstore.errors import ScratchSpaceError

    with Scratch(in_memory_bytes=0) as scratch:
        scratch.file(np.ones((4, 4), np.float16))             # makes the folder
        folder = scratch._dir
        free = __import__("shutil").disk_usage(folder).free
        # a view as large as twice the free space (nothing behind it is allocated)
        huge = np.broadcast_to(np.zeros(1, np.float16), (2, free + 8))
        with pytest.raises(ScratchSpaceError, match="free disk space there or set TMPDIR"):
            scratch.file(huge)
        assert sorted(p.name for p in folder.iterdir()) == ["00001.cols.raw"]
