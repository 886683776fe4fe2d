"""Probe memory: budgets and sizes, the concat baseline skipped when it cannot fit, and an
out-of-memory error that leaves the report and classifier written and prints one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stcstore.classifier import ClassifierArtifact
from stcstore.cli import app
from stcstore.config import ProbeConfig, parse_bytes
from stcstore.errors import ConfigError, MemoryBudgetError
from stcstore.probe.memory import concat_bytes, out_of_memory_as, resolve_budget
from test_probe import N_LAYERS, WIDTH, build_store

ARGS = ["--label", "sentiment", "--split-column", "fold", "--c-grid", "0.01,0.1", "--eta-grid", "0.5,1",
        "--no-progress", "--no-plots"]


def test_parse_bytes_units() -> None:
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(" 1.5 kb") == 1500
    assert parse_bytes("4096") == parse_bytes(4096) == 4096
    assert parse_bytes(None) is None
    for bad in ("lots", "-1", "0", "GB", "12 XB", True):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_probe_config_checks_the_budget() -> None:
    assert ProbeConfig(store="s", label="y", memory_budget="1MiB").validate().memory_budget == 2**20
    with pytest.raises(ConfigError, match="--memory-budget"):
        ProbeConfig(store="s", label="y", memory_budget="much").validate()


def test_default_budget_is_a_share_of_available_ram() -> None:
    import psutil

    avail = psutil.virtual_memory().available
    assert 0 < resolve_budget("cpu") <= avail
    assert resolve_budget("cpu", 12345) == 12345


def test_concat_bytes_counts_the_float64_copy_of_sklearn() -> None:
    assert concat_bytes(10, 6, 100, "torch") == 10 * 100 * 4
    # beyond the in-memory allowance the torch backend's raw columns go to scratch files
    assert concat_bytes(10**6, 6 * 10**5, 10**4, "torch") == 64 << 20
    assert concat_bytes(10, 6, 100, "sklearn") == 10 * 100 * 4 + 6 * 100 * 8


def test_out_of_memory_becomes_one_typed_error() -> None:
    import torch

    for exc in (MemoryError("host"), torch.OutOfMemoryError("CUDA out of memory")):
        with pytest.raises(MemoryBudgetError, match="--memory-budget"):
            with out_of_memory_as("out of memory: use --memory-budget"):
                raise exc
    with pytest.raises(RuntimeError, match="other"):       # not every RuntimeError is memory
        with out_of_memory_as("x"):
            raise RuntimeError("other")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("mem") / "s.zarr", {"train": 300}, sites=("hidden",), pools=("mean",))


class _FaultyConcat:
    """The real solver, except that the concat design (no masks, every layer's columns) runs out of memory."""

    def __init__(self, inner, width: int):
        self.inner, self.width = inner, width
        self.name, self.device, self.uses_init = inner.name, inner.device, inner.uses_init

    def fit_path(self, X, y, n_classes, Cs, masks=None, init=None, **kwargs):
        if masks is None and X.shape[1] == self.width:
            raise MemoryError("injected: the concat design does not fit")
        return self.inner.fit_path(X, y, n_classes, Cs, masks=masks, init=init, **kwargs)

    def __repr__(self) -> str:
        return repr(self.inner)


def test_out_of_memory_in_concat_keeps_report_and_classifier(store, monkeypatch) -> None:
    import stcstore.probe.search as search

    real = search._get_solver
    widest = N_LAYERS["hidden"] * WIDTH["hidden"]
    monkeypatch.setattr(search, "_get_solver", lambda config: _FaultyConcat(real(config), widest))
    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--name", "oom", "--backend", "sklearn", *ARGS])
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "out of memory" in err and "--memory-budget" in err, err
    exp = store / "run0" / "probes" / "oom"
    report = json.loads((exp / "report.json").read_text())
    assert report["pending"] == ["all_layers_concat"] and report["baselines"]["all_layers_concat"] is None
    assert report["stc"]["val"] > 0.5
    art = ClassifierArtifact.load(exp / "classifier")
    assert art.n_features == report["stc"]["n_features"] > 0


def test_concat_skipped_with_a_note_when_over_the_budget(store, caplog) -> None:
    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--name", "small", "--backend", "sklearn",
                                   "--memory-budget", "100KB", *ARGS])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    report = json.loads((store / "run0" / "probes" / "small" / "report.json").read_text())
    assert report["baselines"]["all_layers_concat"] is None and "pending" not in report
    assert any("all_layers_concat skipped" in n and "--memory-budget" in n for n in report["notes"])
    assert "all_layers_concat" not in report["test_scored"]


def test_bad_memory_budget_is_one_line(store) -> None:
    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--name", "bad", "--memory-budget", "much", *ARGS])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--memory-budget" in res.stderr
