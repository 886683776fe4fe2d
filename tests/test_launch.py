"""`extract --nproc-per-node N`: stcstore starts the ranks itself (torch's elastic launch API)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional

import pytest

from _stc_helpers import cli, assert_same_arrays, read_store
from conftest import REPO, run_cli
from stcstore.extract.distributed import assign_windows
from stcstore.extract.launch import LAUNCH_OPTIONS, LaunchSpec, rank_command, threads_per_rank
from stcstore.store import open_run
from stcstore.store.lock import WriterLock


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


# -- refusals before anything starts: exit 2, one line -----------------------------------------------

@pytest.mark.parametrize("launch_args, expected", [
    (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1, got 0"),
    (["--nproc-per-node", "2", "--nnodes", "0"], "--nnodes must be at least 1"),
    (["--nnodes", "2"], "--nnodes needs --nproc-per-node N"),
    (["--nproc-per-node", "2", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nproc-per-node", "2", "--nnodes", "2", "--rdzv-endpoint", "node0:29400", "--node-rank", "1"],
     "drop --node-rank"),
    (["--nproc-per-node", "2", "--nnodes", "2", "--master-addr", "node0"], "needs --node-rank K (0 to 1)"),
    (["--nproc-per-node", "2", "--nnodes", "2", "--master-addr", "node0", "--node-rank", "2"],
     "--node-rank must be between 0 and 1"),
    (["--nproc-per-node", "2", "--rdzv-endpoint", "node0:port"], "is not HOST:PORT"),
    (["--nproc-per-node", "2", "--rdzv-backend", "zeus"], "unknown --rdzv-backend 'zeus'"),
    (["--nproc-per-node", "2", "--rdzv-endpoint", "node0:29400", "--master-addr", "node0"], "not both"),
    (["--nproc-per-node", "2", "--rdzv-backend", "c10d", "--master-port", "29500"], "--rdzv-endpoint HOST:PORT instead"),
    (["--nproc-per-node", "2", "--batch-size", "0"], "--batch-size must be at least 1"),  # extract's own options too
])
def test_bad_launch_options_one_line_exit_2(launch_args, expected, tmp_path, no_torchrun_env):
    store = tmp_path / "s.zarr"
    res = cli("extract", "--model", "minilm", "--data", "rotten_tomatoes", "--store", store, *launch_args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], res.stderr
    assert not store.exists(), "nothing may start before the options are checked"


def test_nproc_per_node_under_torchrun_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    store = tmp_path / "s.zarr"
    res = cli("extract", "--model", "minilm", "--data", "rotten_tomatoes", "--store", store, "--nproc-per-node", "2")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "already runs under torchrun" in lines[0] and "drop --nproc-per-node" in lines[0]
    assert not store.exists()


def test_validate_resolves_the_rendezvous(no_torchrun_env):
    one = LaunchSpec(nproc_per_node=4).validate()
    assert (one.rdzv_backend, one.rdzv_endpoint, one.node_rank, one.world_size) == ("c10d", "localhost:0", None, 4)
    assert LaunchSpec(nproc_per_node=4).validate().rdzv_id != one.rdzv_id, "each one-node job has its own rendezvous"
    many = LaunchSpec(nproc_per_node=8, nnodes=3, rdzv_endpoint="node0:29400").validate()
    assert (many.rdzv_backend, many.rdzv_id, many.world_size) == ("c10d", "stcstore", 24)
    static = LaunchSpec(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="node0").validate()
    assert (static.rdzv_backend, static.rdzv_endpoint, static.node_rank) == ("static", "node0:29500", 1)
    assert not LaunchSpec().requested and LaunchSpec(nnodes=2).requested
    spec = LaunchSpec(nproc_per_node=2)
    spec.validate()
    assert spec.rdzv_endpoint is None, "validate returns a checked copy"


def test_threads_per_rank_default_is_cores_over_ranks():
    assert threads_per_rank(4, environ={}, cores=16) == 4
    assert threads_per_rank(3, environ={}, cores=16) == 5
    assert threads_per_rank(4, environ={}, cores=2) == 1  # never 0
    assert threads_per_rank(4, environ={"OMP_NUM_THREADS": "7"}, cores=16) is None  # the user's value is kept


# a store client whose server goes away mid-wait: what torch's agents and ranks hit when a job ends
_STORE_GONE = """
import datetime, sys, threading, time
from stcstore.cli.common import quiet_torch_cpp_logs
print(quiet_torch_cpp_logs(), flush=True)
import torch.distributed as dist
srv = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=5), wait_for_workers=False)
client = dist.TCPStore("127.0.0.1", srv.port, None, False, timeout=datetime.timedelta(seconds=5))
def stop():
    global srv
    time.sleep(0.3)
    del srv
threading.Thread(target=stop).start()
try:
    client.wait(["never"])
except Exception as exc:
    print(type(exc).__name__)
"""


@pytest.mark.parametrize("case", ["quiet", "verbose", "user_level"])
def test_torch_cpp_warnings_hidden_without_verbose(case):
    """A store that vanished under a waiting client: torch's C++ warning and stack reach stderr
    only with -v or a level the user set; the Python exception is raised either way."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CPP_LOG_LEVEL"}
    code = _STORE_GONE
    if case == "verbose":
        code = "import logging; logging.getLogger('stcstore').setLevel(logging.INFO)\n" + code
    if case == "user_level":
        env["TORCH_CPP_LOG_LEVEL"] = "WARNING"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert res.stdout.split() == [str(case == "quiet"), "DistNetworkError"], res.stdout + res.stderr
    assert ("recvValueWithTimeout failed" in res.stderr) == (case != "quiet"), res.stderr


def test_rank_command_repeats_the_given_options_without_the_launch_ones():
    """The ranks' command line parses back to the same extract options (defaults left out, launch options dropped)."""
    import typer

    from stcstore.cli import app

    group = typer.main.get_command(app)
    argv = ["-v", "extract", "--model", "minilm", "--data", "-odd-name.csv", "--store", "s.zarr", "--run", "R",
            "--split", "train", "--split", "test", "--no-progress", "--nproc-per-node", "2", "--rdzv-id", "x"]
    root = group.make_context("stcstore", list(argv), resilient_parsing=True)
    ctx = group.get_command(root, "extract").make_context("extract", argv[2:], parent=root)
    cmd = rank_command(ctx)
    assert cmd[:4] == [sys.executable, "-u", "-m", "stcstore"]
    assert cmd[4:6] == ["--verbose", "extract"]
    assert not any(a.startswith(("--nproc", "--rdzv")) for a in cmd)
    assert "--data=-odd-name.csv" in cmd and "--batch-size" not in " ".join(cmd)  # defaults stay defaults
    again = group.get_command(root, "extract").make_context("extract", cmd[6:], parent=root)
    want = {k: v for k, v in ctx.params.items() if k not in LAUNCH_OPTIONS}
    assert {k: v for k, v in again.params.items() if k not in LAUNCH_OPTIONS} == want


# -- real launches: 2 CPU ranks (gloo) ----------------------------------------------------------------

def _extract_args(tiny_model, review_csv, store, limit: Optional[int] = 80) -> list[str]:
    # --run R is the option torchrun itself would take for its --run-path
    return ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(store),
            "--run", "R", *(["--limit", str(limit)] if limit else []), "--chunk-rows", "8", "--max-length", "32",
            "--no-progress"]


def _launch(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stcstore", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_nproc_per_node_2_equals_single_process_with_run(tiny_model, review_csv, tmp_path):
    """`stcstore extract --nproc-per-node 2 ... --run R`: exit 0, one summary line, the single-process store bit for bit."""
    ref = tmp_path / "ref.zarr"
    # each rank gets one thread here (2 cores / 2 ranks); the reference runs with one thread too, since
    # float32 sums split over more threads round differently
    res = run_cli(*_extract_args(tiny_model, review_csv, ref), env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    store = tmp_path / "two.zarr"
    res = _launch([*_extract_args(tiny_model, review_csv, store), "--nproc-per-node", "2"], _clean_env(OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("run R in ") and "x 2 ranks" in lines[0], res.stderr
    r = open_run(store, "R")
    assert r.is_complete()
    assert_same_arrays(read_store(store, "R"), read_store(ref, "R"))
    split = r.splits[0]
    records = r.window_records(split)
    todo = [(split, w) for w in sorted(records)]
    for rank in (0, 1):  # both ranks wrote, each its round-robin share
        assert {w for w, rec in records.items() if rec["rank"] == rank} == {w for _, w in assign_windows(todo, rank, 2)}


@pytest.mark.slow
def test_failing_rank_error_reaches_the_user_once_exit_2(tiny_model, review_csv, tmp_path):
    """A run another job is writing: rank 0's one error line, exit 2, none of the launcher's reports."""
    store = tmp_path / "s.zarr"
    args = _extract_args(tiny_model, review_csv, store)
    res = run_cli(*args)  # the run exists...
    assert res.returncode == 0, res.stderr
    with WriterLock(store / "R", "R"):  # ...and is being written by someone else
        res = _launch([*args, "--nproc-per-node", "2"], _clean_env(OMP_NUM_THREADS="1"))
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "being written" in lines[0], res.stderr


def _long_extract_args(tiny_model, review_csv, tmp_path, name: str) -> list[str]:
    """Extract arguments for a run of seconds, not a fraction of one (the review csv 100 times over, no
    --limit), so that a signal sent once both ranks are up lands mid-run."""
    rows = review_csv.read_text().splitlines()
    data = tmp_path / "long.csv"
    data.write_text("\n".join([rows[0], *rows[1:] * 100]) + "\n")
    return _extract_args(tiny_model, data, tmp_path / name, limit=None)


def _start_and_wait_for_ranks(args: list[str], env: dict):
    """Start `stcstore extract ... --nproc-per-node 2`; return the launcher and its 2 rank processes."""
    import psutil

    # SIGINT at its default, as under a terminal: a shell starts background jobs with SIGINT ignored, and
    # Python then never raises KeyboardInterrupt (a CI run started with `&` failed the Ctrl-C test so)
    proc = subprocess.Popen([sys.executable, "-m", "stcstore", *args, "--nproc-per-node", "2"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ranks: list = []
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and len(ranks) < 2:
        ranks = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "RANK" in child.environ():
                    ranks.append(child)
            except psutil.Error:
                pass
        time.sleep(0.05)
    if len(ranks) < 2:
        proc.kill()
        pytest.fail("both ranks must be running")
    return proc, sorted(ranks, key=lambda r: int(r.environ()["RANK"]))


@pytest.mark.slow
def test_ctrl_c_stops_every_rank(tiny_model, review_csv, tmp_path):
    """SIGINT to stcstore (what Ctrl-C sends): every rank ends, one line says the run resumes, exit 130.
    The ranks got the default cores // 2 threads each."""
    import psutil

    proc, ranks = _start_and_wait_for_ranks(_long_extract_args(tiny_model, review_csv, tmp_path, "c.zarr"),
                                              _clean_env())
    try:
        assert {r.environ().get("OMP_NUM_THREADS") for r in ranks} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted:") and "resume" in lines[0], stderr
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, "a rank outlived its launcher"


@pytest.mark.slow
def test_rank_killed_by_a_signal_is_named(tiny_model, review_csv, tmp_path):
    """kill -9 of one rank (nobody prints anything then): the launcher names it in one line, exit 1."""
    import psutil

    proc, ranks = _start_and_wait_for_ranks(_long_extract_args(tiny_model, review_csv, tmp_path, "k.zarr"),
                                            _clean_env(OMP_NUM_THREADS="1"))
    try:
        ranks[1].send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: rank 1") and "SIGKILL" in lines[0], stderr
    assert "resume" in lines[0]
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive


@pytest.mark.slow
@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_two_nodes_on_one_host(rendezvous, tiny_model, review_csv, tmp_path):
    """--nnodes 2: the same command on two "nodes" (here two launchers on this host), one rank each;
    one summary line in all, every window written by its rank."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "n.zarr"
    args = [*_extract_args(tiny_model, review_csv, store), "--nproc-per-node", "1", "--nnodes", "2"]
    per_node = ([["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"]] * 2 if rendezvous == "c10d" else
                [["--master-addr", "127.0.0.1", "--master-port", str(port), "--node-rank", str(k)] for k in (0, 1)])
    procs = [subprocess.Popen([sys.executable, "-m", "stcstore", *args, *extra], cwd=REPO, env=_clean_env(OMP_NUM_THREADS="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for extra in per_node]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errs
    lines = [l for e in errs for l in e.splitlines() if l.strip()]
    assert len(lines) == 1 and "x 2 ranks" in lines[0], errs
    r = open_run(store, "R")
    assert r.is_complete()
    split = r.splits[0]
    records = r.window_records(split)
    todo = [(split, w) for w in sorted(records)]
    for rank in (0, 1):
        assert {w for w, rec in records.items() if rec["rank"] == rank} == {w for _, w in assign_windows(todo, rank, 2)}
