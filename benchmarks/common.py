"""Shared helpers of the benchmark scripts: arguments, machine description, timing, peak RSS, JSON.

Every benchmark script runs on its own (`python benchmarks/<name>.py [--quick] [--device cpu|cuda]`)
and writes `benchmarks/results/<benchmark>-<device>.json` (`results/quick/` with --quick, so CI
never overwrites committed full results):

    {"benchmark", "device", "machine", "date", "config", "figures": {name: number}}

Measured pieces run in fresh subprocesses of the same script (`--worker NAME --spec JSON`): the
parent reaps each with `os.wait4`, whose rusage gives that one child's peak RSS (the kernel's
high-water mark, exact, no polling), and the child reports its own timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_DIR = RESULTS_DIR / "quick"

# Nothing here may reach a hub; the bundled models and data are on disk.
ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}
for _k, _v in ENV_DEFAULTS.items():
    os.environ.setdefault(_k, _v)
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

__all__ = [
    "BENCH_DIR",
    "REPO",
    "RESULTS_DIR",
    "QUICK_DIR",
    "base_parser",
    "worker_dispatch",
    "machine_description",
    "write_result",
    "run_worker",
    "WorkerResult",
    "Timer",
    "sync",
    "median",
    "rss_now_mb",
    "scratch_dir",
    "dir_bytes",
    "log",
]


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays clean)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- arguments ------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (< ~60 s) for CI; writes to results/quick/")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model / solver runs")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per variant (median is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in every worker (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here instead of results/")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (stores, pickles)")
    # internal: run one measured piece in this (fresh) process
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return p


# workers that extract (and extract_throughput's baselines, measured alike): they run as `stcstore extract` does
EXTRACT_WORKERS = ("extract", "bare", "naive")
# workers that probe: they run as `stcstore probe` does
PROBE_WORKERS = ("probe",)


def worker_dispatch(args: argparse.Namespace, workers: Mapping[str, Callable[[dict], dict]]) -> bool:
    """If this process is a worker, run it, write its JSON result, and return True."""
    if args.worker is None:
        return False
    spec = json.loads(args.spec)
    if args.worker in EXTRACT_WORKERS:
        # the OpenMP wait policy `stcstore extract` sets, before anything imports torch
        from stcstore.cli.common import passive_openmp_waits

        passive_openmp_waits()
    if args.worker in PROBE_WORKERS:
        # the heap tuning `stcstore probe` makes before it searches
        from stcstore.heap import return_freed_blocks_to_os

        return_freed_blocks_to_os()
    threads = spec.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    result = workers[args.worker](spec)
    result.setdefault("rss_final_mb", rss_now_mb())
    Path(spec["result_path"]).write_text(json.dumps(result))
    return True


# -- machine --------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: str) -> str:
    """'AMD EPYC, 2 cores, 23 GiB RAM' (+ 'NVIDIA H100 80GB HBM3 (79 GiB)' for cuda)."""
    cores = os.cpu_count() or 1
    try:
        import psutil

        ram = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
        phys = psutil.cpu_count(logical=False)
        if phys and phys != cores:
            cores_s = f"{phys} cores / {cores} threads"
        else:
            cores_s = f"{cores} cores"
    except Exception:  # psutil is a dependency, but the description must never fail a run
        ram, cores_s = "", f"{cores} cores"
    cpu = f"{_cpu_model()}, {cores_s}{ram}"
    if device == "cuda":
        import torch

        n = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        gpu = f"{n} x {props.name} ({props.total_memory / 2**30:.0f} GiB)" if n > 1 else f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        return f"{gpu}; host {cpu}"
    return cpu


def check_device(device: str) -> None:
    """Refuse --device cuda without a GPU: a GPU figure is never written unless measured."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda but no CUDA GPU is visible: run with --device cpu")


# -- results --------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def result_path(benchmark: str, device: str, quick: bool, out: Optional[Path] = None) -> Path:
    if out is not None:
        return Path(out)
    return (QUICK_DIR if quick else RESULTS_DIR) / f"{benchmark}-{device}.json"


def merge_earlier(benchmark: str, device: str, quick: bool, out: Optional[Path], config: dict, figures: dict,
                  details: dict) -> None:
    """Keep, in place, what an earlier result file holds for the parts not run now (figures, details, config).

    Keys stay in the earlier file's order (re-measured ones take their new values, new ones come
    last), so a partial rerun leaves the README table's rows where they were.
    """
    old_path = result_path(benchmark, device, quick, out)
    if not old_path.is_file():
        return
    old = json.loads(old_path.read_text())
    config_old = {k: v for k, v in old.get("config", {}).items() if k not in ("quick", "seconds")}
    for now, before in ((figures, old.get("figures", {})), (details, old.get("details") or {}), (config, config_old)):
        _update_in_order(now, before)


def _update_in_order(now: dict, before: dict) -> None:
    """`now` in place: before's keys in before's order (now's value where it has one), then now's new keys."""
    merged = {k: now.get(k, v) for k, v in before.items()}
    merged.update((k, v) for k, v in now.items() if k not in before)
    now.clear()
    now.update(merged)


def write_result(benchmark: str, device: str, config: dict, figures: dict, *, quick: bool,
                 out: Optional[Path] = None, details: Optional[dict] = None) -> Path:
    """Write the result JSON; figures must be plain numbers (None/NaN are dropped, never faked)."""
    clean_figs: dict[str, float] = {}
    for name, value in figures.items():
        if value is None:
            continue
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            continue
        clean_figs[name] = value
    doc = {
        "benchmark": benchmark,
        "device": device,
        "machine": machine_description(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": _clean({**config, "quick": quick}),
        "figures": _clean(clean_figs),
    }
    if details:
        doc["details"] = _clean(details)
    path = result_path(benchmark, device, quick, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    log(f"wrote {path}")
    for name, value in doc["figures"].items():
        print(f"{benchmark:>20}  {name:<44} {value:>14.4g}")
    return path


# -- subprocess workers and peak RSS -------------------------------------------------------
class WorkerResult(dict):
    """The JSON a worker wrote, plus `peak_rss_mb` (its own high-water mark) and `wall_s`."""


def run_worker(script: str | Path, worker: str, spec: dict, *, timeout: float = 3600,
               threads: Optional[int] = None) -> WorkerResult:
    """Run `python script --worker NAME --spec JSON` in a fresh process; return its result.

    Peak RSS comes from `os.wait4` on that one child (ru_maxrss, KiB on Linux): unlike
    RUSAGE_CHILDREN it is not a maximum over every child this process ever reaped.
    """
    with tempfile.TemporaryDirectory(prefix="stcbench-w-") as tmp:
        result_file = Path(tmp) / "result.json"
        log_file = Path(tmp) / "log.txt"
        spec = {**spec, "result_path": str(result_file)}
        if threads:
            spec["threads"] = threads
        cmd = [sys.executable, str(script), "--worker", worker, "--spec", json.dumps(spec)]
        env = {**os.environ, **ENV_DEFAULTS}
        t0 = time.perf_counter()
        with open(log_file, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
            deadline = t0 + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not result_file.is_file():
            tail = log_file.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"worker {worker} failed (exit {proc.returncode}):\n{tail}")
        out = WorkerResult(json.loads(result_file.read_text()))
    kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    out["peak_rss_mb"] = kib / 1024
    out["wall_s"] = wall
    return out


def rss_now_mb() -> float:
    """Current RSS of this process in MiB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_self_mb() -> float:
    """This process's own high-water mark so far, MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- timing --------------------------------------------------------------------------------
def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer reads the work and not its launch."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Timer:
    """`with Timer(device) as t: ...; t.s` - wall seconds, synchronising CUDA on both ends.

    `t.cpu` is this process's CPU time (all threads) over the same span: less sensitive than
    wall time to other jobs on a shared machine, so workers report both.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.s = 0.0
        self.cpu = 0.0

    def __enter__(self) -> "Timer":
        sync(self.device)
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.s = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0


def median(values) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


# -- scratch --------------------------------------------------------------------------------
@contextmanager
def scratch_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory on local disk (stores, pickles), removed afterwards unless keep."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=f"stcbench-{prefix}-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def dir_bytes(path: Path) -> int:
    """Bytes of every file under path (apparent sizes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def drop_warnings() -> None:
    """Silence library warnings in workers (the log tail is only read on failure)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def prepare(args) -> None:
    """What every benchmark's main does first: check --device, quiet warnings, apply --threads."""
    check_device(args.device)
    drop_warnings()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
