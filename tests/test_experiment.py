"""A probe experiment never loses work: kill -9 and resume to the identical report, one writer,
settings that identify it, layer probes reused across experiments, `rm` under the same lock."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from _stc_helpers import cli
from conftest import REPO
from test_probe import build_store

from stcstore.store.remove import experiment_lock

ARGS = ["--label", "sentiment", "--split-column", "fold", "--name", "e", "--c-grid", "0.01,0.1,1",
        "--eta-grid", "0.3,0.6,1.0", "--backend", "torch", "--device", "cpu", "--no-progress", "--no-plots"]
# a real probe, with each solver call slowed down so that a kill lands where the test wants it
_SLOW = """
import sys, time
import stcstore.probe.blocks as blocks
from stcstore.probe import baselines, candidates, layer_probes, refit
delay = float(sys.argv[1])
real = blocks.fit_path
def slow(*a, **k):
    time.sleep(delay)
    return real(*a, **k)
for m in (baselines, candidates, layer_probes, refit):
    m.fit_path = slow
from stcstore.cli import app
app(sys.argv[2:])
"""
N_PROBES = (4 + 3) * 2          # hidden 4 + ffn 3 entries, two pools (test_probe's synthetic store)


def _probe(store: Path, *extra: str, delay: float = 0.0) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _SLOW, str(delay), "probe", "--store", str(store), *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def _exp(store: Path) -> Path:
    return store / "run0" / "probes" / "e"


def _layer_checkpoints(store: Path) -> int:
    return len(list((store / "run0" / "_cache" / "layer_probes").glob("*/*.safetensors")))


def _comparable(report: dict) -> dict:
    """Everything a resumed run must reproduce: not timings, cache counters or the store path."""
    return {k: v for k, v in report.items() if k not in ("timing_s", "cache", "reused", "store")}


def _weights(store: Path) -> dict:
    return {k: v.tolist() for k, v in load_file(str(_exp(store) / "classifier" / "weights.safetensors")).items()}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A pristine synthetic store, and the report of one uninterrupted probe of a copy of it."""
    base = tmp_path_factory.mktemp("exp")
    pristine = build_store(base / "pristine.zarr", {"train": 500, "extra": 150})
    ref = base / "ref.zarr"
    shutil.copytree(pristine, ref)
    t0 = time.perf_counter()
    _finish(_probe(ref))
    seconds = time.perf_counter() - t0
    report = json.loads((_exp(ref) / "report.json").read_text())
    return {"pristine": pristine, "base": base, "ref": ref, "report": report, "seconds": seconds}


def _copy(stores, name: str) -> Path:
    dest = stores["base"] / name
    shutil.copytree(stores["pristine"], dest)
    return dest


# kill points: right after the experiment is opened, among the layer probes, among the aggregations
KILL_POINTS = {
    "early": lambda s: (_exp(s) / "experiment.json").is_file(),
    "layers": lambda s: _layer_checkpoints(s) >= 5,
    "aggregate": lambda s: len(list((_exp(s) / "_checkpoints").glob("aggregate.*"))) >= 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_same_command_gives_the_identical_report(stores, point):
    store = _copy(stores, f"kill-{point}.zarr")
    proc = _probe(store, delay=0.25)
    deadline = time.monotonic() + 300
    while not KILL_POINTS[point](store):
        assert proc.poll() is None, f"probe ended before the kill point: {proc.communicate()[1]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (_exp(store) / "report.json").exists()
    done_before = _layer_checkpoints(store)

    t0 = time.perf_counter()
    _finish(_probe(store))
    resumed_s = time.perf_counter() - t0
    report = json.loads((_exp(store) / "report.json").read_text())
    assert _comparable(report) == _comparable(stores["report"])
    assert _weights(store) == _weights(stores["ref"])
    assert json.loads((_exp(store) / "search.json").read_text()) == json.loads((_exp(stores["ref"]) / "search.json").read_text())
    # finished layer probes were reused, not refitted
    assert report["reused"]["layer_probes"] == done_before
    assert report["reused"]["layer_probes_fitted"] == N_PROBES - done_before
    if point == "aggregate":
        assert report["reused"]["aggregations"] >= 2
    print(f"{point}: {done_before} layer probes kept; resumed run {resumed_s:.1f} s, "
          f"uninterrupted {stores['seconds']:.1f} s")


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_settings_return_the_finished_result_and_other_settings_are_refused(stores):
    store = _copy(stores, "refuse.zarr")
    args = ["probe", "--store", store, *ARGS]
    assert cli(*args).returncode == 0
    before = _tree_digest(_exp(store))
    again = cli(*args)
    assert again.returncode == 0 and _tree_digest(_exp(store)) == before   # returned, not searched again

    other = cli(*[a if a != "0.01,0.1,1" else "0.1,1" for a in args])
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1, other.stderr
    assert "experiment 'e' exists with other settings" in lines[0] and "c_grid: 0.01,0.1,1 -> 0.1,1" in lines[0]
    assert "--overwrite" in lines[0]
    assert _tree_digest(_exp(store)) == before                             # nothing touched

    label = cli(*[a if a != "sentiment" else "topic" for a in args])
    assert label.returncode == 2 and "label: 'sentiment' -> 'topic'" in label.stderr

    replaced = cli(*[a if a != "sentiment" else "topic" for a in args], "--overwrite")
    assert replaced.returncode == 0
    assert json.loads((_exp(store) / "report.json").read_text())["label"] == "topic"


def test_layer_probes_are_reused_by_another_experiment_and_fresh_refits(stores):
    store = _copy(stores, "reuse.zarr")
    assert cli("probe", "--store", store, *ARGS).returncode == 0
    first = json.loads((_exp(store) / "report.json").read_text())
    assert first["reused"] == {"layer_probes": 0, "layer_probes_fitted": N_PROBES, "aggregations": 0}

    other = [a if a != "e" else "e2" for a in ARGS]
    other[other.index("0.3,0.6,1.0")] = "0.5,1.0"                  # another eta grid, same fits
    assert cli("probe", "--store", store, *other, "--sites", "ffn").returncode == 0
    second = json.loads((store / "run0" / "probes" / "e2" / "report.json").read_text())
    assert second["reused"]["layer_probes"] == 3 * 2 and second["reused"]["layer_probes_fitted"] == 0
    ffn = [e for e in first["layers"] if e["site"] == "ffn"]
    assert second["layers"] == ffn

    assert cli("probe", "--store", store, *ARGS, "--fresh").returncode == 0
    fresh = json.loads((_exp(store) / "report.json").read_text())
    assert fresh["reused"] == {"layer_probes": 0, "layer_probes_fitted": N_PROBES, "aggregations": 0}
    assert _comparable(fresh) == _comparable(first)


def test_a_second_writer_and_rm_are_refused_while_the_lock_is_held(stores):
    store = _copy(stores, "lock.zarr")
    assert cli("probe", "--store", store, *ARGS).returncode == 0
    before = _tree_digest(_exp(store))
    with experiment_lock(_exp(store), "e"):
        for args in (["probe", "--store", store, *ARGS, "--fresh"],
                     ["rm", "--store", store, "--experiment", "e"],
                     ["rm", "--store", store, "--run", "run0"]):
            r = cli(*args)
            assert r.returncode == 2, (args, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1
            assert f"experiment 'e' is being written by pid {os.getpid()}" in r.stderr
        after = _tree_digest(_exp(store))
        assert {k: v for k, v in after.items() if k != "_probe.lock"} == \
            {k: v for k, v in before.items() if k != "_probe.lock"}
    assert (_exp(store) / "report.json").is_file()
    assert cli("rm", "--store", store, "--experiment", "e").returncode == 0
    assert not _exp(store).exists()
    missing = cli("rm", "--store", store, "--experiment", "e")
    assert missing.returncode == 2 and "experiment 'e' not in run 'run0'" in missing.stderr
    assert cli("rm", "--store", store).returncode == 2
    assert cli("rm", "--store", store, "--run", "run0").returncode == 0
    assert not (store / "run0").exists()


def test_ctrl_c_says_what_is_true_for_each_command(stores, monkeypatch):
    import stcstore.probe.search as search

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "run_probe", interrupted)
    r = cli("probe", "--store", stores["pristine"], *ARGS)
    assert r.returncode == 130
    assert r.stderr.strip() == "interrupted: rerun the same command to resume (finished layer probes and aggregations are kept)"
    import stcstore.store.remove as remove

    monkeypatch.setattr(remove, "remove", interrupted)
    r = cli("rm", "--store", stores["pristine"], "--experiment", "e")
    assert r.returncode == 130 and "partly deleted" in r.stderr
