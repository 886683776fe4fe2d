"""The command line as a user meets it: one-line errors, messages kept whole, help, version, output width."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _stc_helpers import cli
from conftest import run_cli


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_model, review_csv):
    """One extract of the tiny BERT over the review csv: (store path, the command's result)."""
    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    r = cli("extract", "--model", tiny_model("bert"), "--data", review_csv, "--store", path, "--no-progress")
    assert r.returncode == 0, r.stderr
    return path, r


@pytest.fixture(scope="module")
def store(extracted) -> Path:
    """A store with one complete run of the tiny BERT over the review csv."""
    return extracted[0]


def _one_line_error(r, *words: str) -> str:
    """Assert a user error: exit 2, nothing on stdout, one stderr line holding every word."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_probe_negative_seed_is_refused(store):
    r = cli("probe", "--store", store, "--label", "label", "--seed", "-1", "--no-progress", "--no-plots")
    _one_line_error(r, "--seed", "-1")


def test_probe_config_refuses_negative_seed_in_the_library():
    from stcstore import ProbeConfig
    from stcstore.errors import ConfigError

    with pytest.raises(ConfigError, match="--seed"):
        ProbeConfig(store="s", label="label", seed=-1).validate()


@pytest.mark.parametrize("where", ["zarr.json", "RUN/zarr.json"])
@pytest.mark.parametrize("command", ["info", "probe"])
def test_corrupt_metadata_is_one_line(store, tmp_path, where, command):
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    run = next(p.name for p in bad.iterdir() if p.is_dir())
    rel = where.replace("RUN", run)
    (bad / rel).write_text("{not json")
    args = ["--label", "label", "--no-progress", "--no-plots"] if command == "probe" else []
    r = cli(command, "--store", bad, *args)
    _one_line_error(r, "damaged", rel)


# -- messages are printed as written (no rich markup), lines are not hard-wrapped -------------------
def test_brackets_in_messages_survive(store):
    r = cli("probe", "--store", store, "--label", "label", "--backend", "cuml", "--no-progress")
    _one_line_error(r, "pip install 'stcstore[gpu]'")


def test_data_path_with_brackets(store, tmp_path, tiny_model, review_csv):
    r = cli("extract", "--model", tiny_model("bert"), "--data", tmp_path / "reviews[v2].csv", "--store", tmp_path / "x")
    _one_line_error(r, "reviews[v2].csv")
    shutil.copy(review_csv, tmp_path / "reviews[v2].csv")
    r = cli("extract", "--model", tiny_model("bert"), "--data", tmp_path / "reviews[v2].csv",
            "--store", tmp_path / "x.zarr", "--no-progress", "--limit", "5")
    assert r.returncode == 0, r.stderr
    assert "5 rows" in r.stderr


def test_piped_output_is_not_wrapped_at_80_columns(extracted):
    _, r = extracted
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80, r.stderr          # the extract summary, whole
    assert "rows/s" in lines[0] and "tokens/s" in lines[0]


# -- a mistyped alias or dataset id without a reachable hub fails at once ----------------------------
@pytest.mark.parametrize("args,hint", [
    (("--model", "minilmx", "--data", "rotten_tomatoes"), "did you mean minilm?"),
    (("--model", "minilm", "--data", "rotten_tomatos"), "did you mean rotten_tomatoes?"),
])
def test_mistyped_alias_without_network_fails_fast(tmp_path, args, hint):
    # a real process: the hub's offline flags are read at import; a closed local port stands in for
    # a network without the hub (connection refused at once, the same in CI with network)
    env = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = run_cli("extract", *args, "--store", str(tmp_path / "s.zarr"), env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr                                  # no retry warnings
    assert hint in lines[0] and "cannot be reached" in lines[0] and "127.0.0.1:9" in lines[0]


# -- commands we suggest work in a fresh shell (no venv active) -------------------------------------
FRESH_PATH = "/usr/bin:/bin"


def _fresh_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = FRESH_PATH
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_self_command_runs_in_a_fresh_shell(tmp_path):
    from stcstore.cli.common import self_command

    cmd = self_command()
    r = _fresh_shell(f"{cmd} --help", tmp_path)
    assert r.returncode == 0 and "extract" in r.stdout, (cmd, r.stderr)


@pytest.mark.slow
def test_demo_try_lines_work_in_a_fresh_shell(tmp_path):
    r = cli("demo", "--rows", "200", "--out", tmp_path / "demo", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    tries = [line.split("Try:", 1)[-1].strip() for line in r.stdout.splitlines() if "--classifier" in line]
    assert len(tries) == 2 and tries[0].split()[1] == "predict", r.stdout   # each one whole line (no wrap)
    out = _fresh_shell(tries[0].replace('"your review"', '"a gripping, beautifully acted film"'), Path("/"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("fresh", "rotten")


# -- help -----------------------------------------------------------------------------------------
def _commands() -> list[str]:
    from stcstore.cli import app

    return [c.name for c in app.registered_commands]


@pytest.mark.parametrize("command", ["", *_commands()])
def test_help_shows_flags_without_value_types(command):
    r = cli(*([command] if command else []), "--help")
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout, r.stdout
    usage = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    if not command:
        line = next(line for line in r.stdout.splitlines() if "--verbose" in line)
        assert "<int>" not in line, line


def test_help_usage_names_arguments_in_capitals():
    assert "Usage: stcstore explain [OPTIONS] TEXT" in cli("explain", "--help").stdout
    assert "Usage: stcstore predict [OPTIONS] [TEXTS...]" in cli("predict", "--help").stdout
    assert "Usage: stcstore [OPTIONS] COMMAND [ARGS]..." in cli("--help").stdout


# -- long commands report progress in logs too ----------------------------------------------------
def test_probe_prints_progress_lines_when_stderr_is_not_a_terminal(store, tmp_path, monkeypatch):
    monkeypatch.setenv("STCSTORE_PROGRESS_INTERVAL", "0")      # a line per step instead of every 30 s
    r = cli("probe", "--store", store, "--label", "label", "--name", "progress", "--no-plots",
            "--c-grid", "0.1,1", "--eta-grid", "0.5,1", "--no-concat-baseline")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if re.match(r"(probe|aggregate)\b.*: \d+/\d+ step", line)]
    assert len(lines) >= 3, r.stderr
    assert "\r" not in r.stderr
    done = [int(re.search(r": (\d+)/(\d+)", line).group(1)) for line in lines]
    assert done == sorted(done)                                  # counts only go up


def test_extract_summary_rate_is_the_progress_rate(tmp_path, tiny_model, review_csv, monkeypatch):
    monkeypatch.setenv("STCSTORE_PROGRESS_INTERVAL", "1000")     # only the final progress line
    r = cli("extract", "--model", tiny_model("bert"), "--data", review_csv, "--store", tmp_path / "s.zarr")
    assert r.returncode == 0, r.stderr
    bar = next(line for line in r.stderr.splitlines() if line.startswith("extract ") and "(done)" in line)
    summary = next(line for line in r.stderr.splitlines() if line.startswith("run "))
    bar_rate = float(re.search(r"([\d,.]+) row/s", bar).group(1).replace(",", ""))
    summary_rate = float(re.search(r"([\d,.]+) rows/s", summary).group(1).replace(",", ""))
    assert "150/150 row" in bar
    # the same rows over the same clock (model loading is in neither); rounding to 0.1 aside
    assert abs(summary_rate - bar_rate) <= 0.02 * bar_rate + 0.1, (bar, summary)


def test_version():
    import importlib.metadata

    r = cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"stcstore {importlib.metadata.version('stcstore')}"


# runs the command line in a fresh interpreter and reports OMP_WAIT_POLICY as it was when torch was
# first imported (OpenMP reads it then, once)
_POLICY_AT_TORCH_IMPORT = """
import importlib.machinery, os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        # a probe (importlib.util.find_spec) gets a spec too: only running torch's module counts
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name == "torch" else None
        if spec is not None:
            run = spec.loader.exec_module
            def exec_module(module):
                seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
                run(module)
            spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Watch())
if sys.argv[1] == "import":
    import stcstore, stcstore.probe.solvers.torch_solver
    code = 0
else:
    from stcstore.cli import app
    try:
        app(sys.argv[1:])
        code = 0
    except SystemExit as exc:
        code = exc.code
print(seen[0] if seen else "torch not imported", code)
"""


@pytest.mark.parametrize("args,env,expected", [
    (["import"], {}, "unset 0"),                       # the library sets no process setting
    (["extract", "--batch-size", "0"], {}, "PASSIVE 2"),
    (["extract", "--batch-size", "0"], {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE 2"),  # the user's value wins
])
def test_only_extract_asks_openmp_for_passive_waits_before_torch_loads(tmp_path, tiny_model, review_csv, args, env,
                                                                         expected):
    """Passive waits keep extraction's writer thread on its core; the probe needs workers that wake at once
    (on two cores the whole default search took 847 s with them passive, 501 s without)."""
    if args[0] == "extract":
        args = [*args, "--model", str(tiny_model), "--data", str(review_csv), "--store", str(tmp_path / "s.zarr")]
    e = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", _POLICY_AT_TORCH_IMPORT, *args], capture_output=True, text=True,
                         env=e, timeout=300)
    assert out.stdout.split()[-2:] == expected.split(), out.stderr[-2000:]


_ARGS_SMALL_PROBE = ["--label", "sentiment", "--split-column", "fold", "--c-grid", "0.1", "--eta-grid", "1",
                     "--no-progress", "--no-plots", "--backend", "sklearn"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ")
def test_a_full_disk_is_one_line_and_the_probe_resumes_after(tmp_path) -> None:
    """A write that finds no room (here: the file-size limit, EFBIG) ends the command with what to do, exit 2."""
    import resource
    import signal

    from test_probe import build_store

    store = build_store(tmp_path / "s.zarr", {"train": 300}, sites=("hidden",), pools=("mean",))

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # the write fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    args = [sys.executable, "-m", "stcstore", "probe", "--store", str(store), "--name", "full", *_ARGS_SMALL_PROBE]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no room on the disk"), out.stderr[-3000:]
    assert "(File too large): raise the file-size limit (ulimit -f), then rerun the same command to resume" in lines[0]
    again = cli("probe", "--store", store, "--name", "full", *_ARGS_SMALL_PROBE)
    assert again.returncode == 0, again.stderr
    assert (store / "run0" / "probes" / "full" / "report.json").is_file()
