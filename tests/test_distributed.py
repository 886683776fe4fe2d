"""`extract` under torchrun (CPU, gloo): disjoint windows, one shared store, resume with any rank count."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from stcstore.extract.distributed import RunProgress, assign_windows, detect
from stcstore.store import open_run
from stcstore.store.lock import WriterLock
from stcstore.store.progress import commit_window
from stcstore.store.writer import RunLayout
from _stc_helpers import assert_same_arrays, read_store

MINILM_ARGS = ("--model", "minilm", "--data", "rotten_tomatoes", "--limit", "160", "--chunk-rows", "16",
               "--batch-size", "8", "--no-progress")
N_WINDOWS = 10  # 160 rows in windows of 16


def _torchrun(nproc: int) -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc-per-node", str(nproc)]


def _run_torchrun(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # `--` ends torchrun's own options: without it torchrun takes --run for its --run-path
    cmd = [*_torchrun(nproc), "-m", "stcstore", "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _assert_same_store(got: Path, want: dict) -> None:
    assert_same_arrays(read_store(got), want)


def _error_lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith("error:")]


# -- window assignment: disjoint and covering by construction ------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 16])
def test_assign_windows_disjoint_and_covering(world):
    rng = random.Random(world)
    todos = [
        [],
        [("train", 0)],
        [("train", w) for w in range(10)],
        [("train", w) for w in range(0, 40, 3)] + [("test", w) for w in range(5)],
        sorted({("s%d" % rng.randrange(3), rng.randrange(100)) for _ in range(60)}),
    ]
    for todo in todos:
        shares = [assign_windows(todo, r, world) for r in range(world)]
        flat = [w for s in shares for w in s]
        assert len(flat) == len(set(flat)) == len(todo), "shares overlap or miss windows"
        assert set(flat) == set(todo)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1, "shares unbalanced"
        assert shares == [assign_windows(list(todo), r, world) for r in range(world)], "not a pure function"
    with pytest.raises(ValueError):
        assign_windows([("train", 0)], 2, 2)


def test_detect_reads_environment_when_called():
    assert detect({}) is None
    assert detect({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None  # torchrun --nproc-per-node 1
    env = detect({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    from stcstore.errors import ConfigError

    with pytest.raises(ConfigError):
        detect({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError):
        detect({"WORLD_SIZE": "two", "RANK": "0"})


def test_rank0_progress_counts_windows_committed_by_other_ranks(tmp_path):
    lay = RunLayout(splits={"train": 100, "test": 30}, sites=("hidden",), pools=("mean",), n_layers={"hidden": 2},
                    width={"hidden": 4}, dtype="float16", chunk_rows=10)
    todo = [("train", w) for w in range(10)] + [("test", w) for w in range(3)]
    commit_window(tmp_path, "train", 0, {"rows": 10})  # committed by an earlier job
    todo.remove(("train", 0))
    mine = assign_windows(todo, 0, 2)
    prog = RunProgress(lay, tmp_path, "r", todo, mine, enabled=True, poll_s=0.0)
    assert prog.bar.n == 10
    prog.update(10)  # rank 0's own rows
    theirs = assign_windows(todo, 1, 2)
    for split, w in theirs[:2]:
        commit_window(tmp_path, split, w, {"rows": 10})
    prog.poll(force=True)
    assert prog.bar.n == 10 + 10 + 20
    for split, w in theirs:
        commit_window(tmp_path, split, w, {"rows": 10})
    prog.poll(force=True)
    assert prog.bar.n == 10 + 10 + sum(lay.window_bounds(*w)[1] - lay.window_bounds(*w)[0] for w in theirs)
    prog.close()


# -- MiniLM: 2 ranks equal 1 process, bitwise ----------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted single-process store of MiniLM on 160 Rotten Tomatoes rows."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    # torchrun gives each rank one thread; float32 sums split over more threads round differently
    # (measured: fp16 values 1-2 ulp apart), so the reference runs with one thread too
    res = run_cli("extract", *MINILM_ARGS, "--store", str(store), env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    return read_store(store)


@pytest.mark.slow
def test_two_ranks_store_equals_single_process_store(reference, tmp_path):
    store = tmp_path / "d2.zarr"
    res = _run_torchrun(2, "extract", *MINILM_ARGS, "--store", str(store))
    assert res.returncode == 0, res.stderr
    report = " ".join(res.stderr.split())
    assert report.count("run minilm__rotten_tomatoes in") == 1, "only rank 0 reports"
    assert "x 2 ranks" in report
    r = open_run(store)
    assert r.is_complete()
    _assert_same_store(store, reference)
    # every window was written by exactly the rank it was assigned to, and both ranks wrote
    records = r.window_records("train")
    assert sorted(records) == list(range(N_WINDOWS))
    todo = [("train", w) for w in range(N_WINDOWS)]
    for rank in (0, 1):
        assert {w for w, rec in records.items() if rec["rank"] == rank} == {w for _, w in assign_windows(todo, rank, 2)}


@pytest.mark.slow
def test_two_ranks_killed_then_resumed_with_one_process(reference, tmp_path):
    import psutil

    store = tmp_path / "k.zarr"
    progress = store / "minilm__rotten_tomatoes" / "_progress" / "train"
    proc = subprocess.Popen([*_torchrun(2), "-m", "stcstore", "--", "extract", *MINILM_ARGS, "--store", str(store)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline:
            done = len(list(progress.glob("w*.json"))) if progress.is_dir() else 0
            if done >= 2:
                # SIGKILL rank 0, the writer-lock holder; torchrun then stops rank 1
                for child in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        if child.environ().get("RANK") == "0":
                            child.send_signal(signal.SIGKILL)
                            killed = child.pid
                    except psutil.Error:
                        pass
                if killed:
                    break
            time.sleep(0.02)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the kill must land while the job runs"
    assert proc.returncode != 0
    before = open_run(store).window_records("train")
    assert 2 <= len(before) < N_WINDOWS, "the job must have stopped part way"
    todo = [("train", w) for w in range(N_WINDOWS)]
    for w, rec in before.items():  # windows of the killed job were written by their assigned rank
        assert ("train", w) in assign_windows(todo, rec["rank"], 2)

    # resume: one plain process (one thread, as the reference and each rank)
    res = run_cli("extract", *MINILM_ARGS, "--store", str(store), env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert f"{len(before)} windows resumed" in " ".join(res.stderr.split())
    r = open_run(store)
    assert r.is_complete()
    _assert_same_store(store, reference)
    after = r.window_records("train")
    assert all(after[w]["rank"] == 0 for w in set(after) - set(before))


# -- refusals: every rank exits 2, one line -----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_ranks(args_per_rank: list[list[str]], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Start one `python -m stcstore` per rank with torchrun's variables set by hand, so each
    rank's exit code and stderr can be checked on its own."""
    world, port = len(args_per_rank), _free_port()
    procs = []
    for rank, args in enumerate(args_per_rank):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "stcstore", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny_model, review_csv):
    store = tmp_path_factory.mktemp("tiny") / "s.zarr"
    args = ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(store),
            "--run", "r1", "--limit", "40", "--chunk-rows", "8", "--max-length", "32", "--no-progress"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    return store, args


def test_locked_run_refused_under_torchrun(tiny_store):
    """A second job while one runs: its rank 0 is refused, every rank exits 2, one error line."""
    store, args = tiny_store
    with WriterLock(store / "r1", "r1"):
        res = _run_torchrun(2, *args, timeout=300)
    assert res.returncode != 0
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "being written" in lines[0], res.stderr
    # torchrun's failure report lists every worker with its exit code
    assert res.stderr.count("exitcode  : 2") == 2, res.stderr


def test_bad_model_reported_once(tiny_store, tmp_path):
    """Every rank fails the same way: rank 0 alone prints; each process exits 2."""
    store, args = tiny_store
    bad = [a if a != args[2] else str(tmp_path / "nope") for a in args]
    results = _launch_ranks([bad, bad])
    assert [r.returncode for r in results] == [2, 2]
    assert len(_error_lines(results[0].stderr)) == 1 and "not found" in results[0].stderr
    assert not results[1].stderr.strip(), results[1].stderr


def test_failure_on_another_rank_reported_by_that_rank(tiny_store):
    """Rank 1 sees other data than rank 0 (as a node without the shared copy would): it names itself."""
    store, args = tiny_store
    other = [a if a != "40" else "30" for a in args]
    results = _launch_ranks([args, other])
    assert [r.returncode for r in results] == [2, 2]
    assert not results[0].stderr.strip(), results[0].stderr
    lines = _error_lines(results[1].stderr)
    assert len(lines) == 1 and "rank 1" in lines[0] and "other settings" in lines[0], results[1].stderr
    assert open_run(store, "r1").is_complete()


# -- --device-map auto on CPU -----------------------------------------------------------------------

def test_device_map_auto_on_cpu_extracts_the_same(tiny_store, tmp_path):
    """accelerate's device_map="auto" with no GPU puts every layer on the CPU: the same numbers."""
    store, args = tiny_store
    mapped = tmp_path / "mapped.zarr"
    res = run_cli(*[str(mapped) if a == str(store) else a for a in args], "--device-map", "auto")
    assert res.returncode == 0, res.stderr
    assert open_run(mapped).is_complete()
    _assert_same_store(mapped, read_store(store))


def test_device_map_value_checked():
    from stcstore.config import ExtractConfig
    from stcstore.errors import ConfigError

    with pytest.raises(ConfigError, match="--device-map"):
        ExtractConfig(model="m", data="d", store="s", device_map="everywhere").validate()
    assert ExtractConfig(model="m", data="d", store="s", device_map="auto").validate().device_map == "auto"


# -- one collective backend, LOCAL_RANK checked ---------------------------------------------------------

def test_one_gloo_group_carries_every_collective(monkeypatch):
    """The job's only process group is gloo (no NCCL group that nothing uses), also with CUDA present."""
    import torch.distributed as dist

    from stcstore.extract.distributed import DistContext, DistEnv

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    with DistContext(DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1), timeout_s=60) as ctx:
        assert dist.get_backend() == "gloo" and ctx.group is dist.group.WORLD
        assert ctx.all_gather({"rows": 3}) == [{"rows": 3}]
        ctx.barrier()
    assert not dist.is_initialized()


def test_local_rank_beyond_visible_gpus_is_one_line_user_error():
    """LOCAL_RANK = number of visible GPUs (0 here, n on a GPU node) is one past the last: a user error,
    exit 2 through the rank status, one line naming the fix; no CUDA call fails first."""
    import torch

    from stcstore.errors import UserError
    from stcstore.extract.distributed import DistEnv, Status, rank_device

    n = torch.cuda.device_count()
    env = DistEnv(rank=n, world_size=n + 1, local_rank=n, local_world_size=n + 1)
    with pytest.raises(UserError) as e:
        rank_device(env, torch.device("cuda"))
    msg = str(e.value)
    assert "\n" not in msg and f"LOCAL_RANK {n}" in msg and f"--nproc-per-node {n}" in msg
    assert Status.failed(env.rank, e.value).exit_code == 2
    assert rank_device(env, torch.device("cpu")) == torch.device("cpu")   # --device cpu: any number of ranks


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_more_ranks_than_gpus_exit_2_one_line(tiny_store, tmp_path):
    """torchrun with one rank more than the node's GPUs: exit 2, one error line naming LOCAL_RANK."""
    import torch

    _, args = tiny_store
    store = str(tmp_path / "g.zarr")
    cuda_args = [store if a.endswith("s.zarr") else a for a in args] + ["--device", "cuda"]
    res = _run_torchrun(torch.cuda.device_count() + 1, *cuda_args, timeout=300)
    lines = _error_lines(res.stderr)
    assert res.returncode != 0 and len(lines) == 1 and "LOCAL_RANK" in lines[0], res.stderr
    assert "exitcode  : 2" in res.stderr, res.stderr
