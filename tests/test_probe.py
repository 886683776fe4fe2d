"""`stcstore probe` end to end on synthetic stores: report contract, selection on val only,
the classifier against a NumPy recomputation, cache reuse, bad input, and bounded memory."""

from __future__ import annotations

import hashlib
import math
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import REPO
from stcstore.cli import app
from stcstore.classifier import ClassifierArtifact
from stcstore.probe.report import check_report
from stcstore.store import RunLayout, RunWriter, chunk_rows_for, open_root, open_run

SITES = ("hidden", "ffn")
POOLS = ("mean", "max")
N_LAYERS = {"hidden": 4, "ffn": 3}
WIDTH = {"hidden": 24, "ffn": 40}
C_GRID = "0.01,0.1,1"
ETA_GRID = "0.3,0.6,1.0"


# -- synthetic stores -----------------------------------------------------------------------------
def _labels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    sentiment = rng.integers(0, 2, n)
    topic = rng.integers(0, 3, n)
    fold = rng.choice(np.array(["train", "val", "test"]), n, p=[0.6, 0.2, 0.2])
    return {
        "sentiment": np.where(sentiment == 1, "pos", "neg"),
        "topic": topic,
        "one": np.full(n, "same"),
        "fold": fold,
        "badfold": np.where(fold == "test", "holdout", fold),
    }


def _activations(rng: np.random.Generator, site: str, pool: str, n_layers: int, width: int,
                 lab: dict[str, np.ndarray]) -> np.ndarray:
    """Noise around a nonzero mean; a few neurons of a few layers carry the labels."""
    n = len(lab["topic"])
    a = rng.standard_normal((n_layers, n, width)).astype(np.float32) + 2.0 + 0.1 * np.arange(width)
    s = np.where(lab["sentiment"] == "pos", 1.0, -1.0).astype(np.float32)
    gain = 1.0 if pool == "mean" else 0.7
    if site == "hidden" and n_layers >= 4:
        a[2, :, 1] += 0.9 * gain * s
        a[2, :, 5] -= 0.5 * gain * s
        a[3, :, 7] += 0.6 * gain * s
        for c in range(3):
            a[3, :, 10 + c] += 1.6 * gain * (lab["topic"] == c)
    if site == "ffn" and n_layers >= 3:
        a[1, :, 3] += 0.8 * gain * s
        for c in range(3):
            a[2, :, 20 + c] += 1.2 * gain * (lab["topic"] == c)
    if site == "hidden" and n_layers == 2:          # the memory test's store
        a[1, :, 0] += 1.5 * s
        a[1, :, 9] += 1.0 * s
    return a


def build_store(path: Path, splits: dict[str, int], *, sites=SITES, pools=POOLS, n_layers=None, width=None,
                chunk_rows: int | None = 64, seed: int = 0, complete: bool = True, run: str = "run0") -> Path:
    """A store written through RunWriter (create, write_window, commit), window by window."""
    n_layers = dict(n_layers or N_LAYERS)
    width = dict(width or WIDTH)
    rng = np.random.default_rng(seed)
    labels = {s: _labels(rng, n) for s, n in splits.items()}
    rows = chunk_rows or chunk_rows_for(min(width[s] for s in sites), "float16", max(splits.values()))
    layout = RunLayout(splits=dict(splits), sites=tuple(sites), pools=tuple(pools),
                       n_layers={s: n_layers[s] for s in sites}, width={s: width[s] for s in sites},
                       dtype="float16", chunk_rows=rows)
    root = open_root(path, create=True)
    writer = RunWriter(root, Path(path) / run, run)
    meta = {
        "model": {"spec": "synthetic-bert", "weight_hash": "0123abcd", "revision": "main", "model_type": "bert",
                  "n_layers": n_layers.get("ffn", 3), "d": width.get("hidden"), "d_ff": width.get("ffn")},
        "extract": {"max_length": 64, "dtype": "float16", "truncation_side": "right"},
        "dataset": {"description": "synthetic"},
    }
    writer.create(layout, {"model": "synthetic", "seed": seed, "rows": splits}, meta,
                  {s: np.arange(n) for s, n in splits.items()}, labels)
    for split, n in splits.items():
        n_win = layout.n_windows(split)
        for w in range(n_win if complete else n_win - 1):
            a, b = layout.window_bounds(split, w)
            lab = {k: v[a:b] for k, v in labels[split].items()}
            pooled = {(site, pool): _activations(rng, site, pool, n_layers[site], width[site], lab).astype(np.float16)
                      for site in sites for pool in pools}
            writer.write_window(split, w, pooled, np.full(b - a, 8, np.int32), {"rows": b - a})
    return Path(path)


def _tree(path: Path) -> dict[str, str]:
    """Every file under a path with a hash of its content."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _solver_available() -> bool:
    try:
        from stcstore.probe.solvers import get_solver  # noqa: F401
    except ImportError:
        return False
    return True


needs_solver = pytest.mark.skipif(not _solver_available(), reason="stcstore.probe.solvers not installed yet")


# -- one experiment through the CLI, inspected by several tests ------------------------------------
@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Run `probe` once in-process (counting how often test accuracy is computed)."""
    if not _solver_available():
        pytest.skip("stcstore.probe.solvers not installed yet")
    import stcstore.probe.baselines as baselines
    import stcstore.probe.scoring as search

    base = tmp_path_factory.mktemp("probe")
    store = build_store(base / "s.zarr", {"train": 700, "extra": 200})
    calls: list[int] = []
    real_metrics = search.classification_metrics

    def counting(y, dec, k):
        calls.append(len(y))
        return real_metrics(y, dec, k)

    search.classification_metrics = baselines.classification_metrics = counting
    try:
        res = CliRunner().invoke(app, [
            "probe", "--store", str(store), "--label", "sentiment", "--split-column", "fold", "--name", "exp1",
            "--out", str(base / "out"), "--c-grid", C_GRID, "--eta-grid", ETA_GRID, "--no-progress",
        ])
    finally:
        search.classification_metrics = baselines.classification_metrics = real_metrics
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    exp = store / "run0" / "probes" / "exp1"
    return {"store": store, "exp": exp, "out": base / "out", "result": res, "test_calls": calls,
            "report": json.loads((exp / "report.json").read_text())}


def _role_rows(store: Path, role: str) -> dict[str, np.ndarray]:
    """Stored rows whose fold is `role`, per store split (read straight from the store)."""
    r = open_run(store)
    return {s: np.flatnonzero(r.column(s, "fold") == role) for s in r.splits}


def test_report_contract(experiment):
    rep = experiment["report"]
    assert check_report(rep) == []
    assert rep["label"] == "sentiment" and rep["classes"] == ["neg", "pos"] and rep["metric"] == "accuracy"
    folds = {role: sum(len(ix) for ix in _role_rows(experiment["store"], role).values()) for role in ("train", "val", "test")}
    assert rep["n"] == folds
    assert {"site", "pool", "eta", "k", "C", "n_features", "val", "test", "macro_f1"} <= set(rep["stc"])
    assert rep["stc"]["site"] in ("hidden", "ffn", "both")
    assert rep["stc"]["eta"] in (0.3, 0.6, 1.0) and rep["stc"]["C"] in (0.01, 0.1, 1.0)
    n_probes = sum(N_LAYERS.values()) * len(POOLS)
    assert len(rep["layers"]) == n_probes
    assert {(e["site"], e["pool"], e["layer"]) for e in rep["layers"]} == {
        (s, p, l) for s in SITES for p in POOLS for l in range(N_LAYERS[s])}
    for name in ("last_layer", "best_layer", "all_layers_concat"):
        b = rep["baselines"][name]
        assert 0 <= b["val"] <= 1 and 0 <= b["test"] <= 1 and b["n_features"] >= 0
    assert rep["baselines"]["last_layer"]["site"] == "hidden"
    assert rep["baselines"]["last_layer"]["layer"] == N_LAYERS["hidden"] - 1
    assert all(rep["timing_s"][k] >= 0 for k in ("load", "probes", "aggregate", "total"))
    assert rep["timing_s"]["total"] >= rep["timing_s"]["probes"]
    # the rich table went to stdout
    table = experiment["result"].stdout
    assert "STC" in table and "best layer" in table and "all layers" in table
    assert f"{100 * rep['stc']['test']:.1f}" in table


def test_selection_uses_val_and_test_is_scored_once(experiment):
    rep = experiment["report"]
    search = json.loads((experiment["exp"] / "search.json").read_text())
    assert len(search) == rep["n_configs"] > 0
    # the one-standard-error rule, recomputed from the search table: among configs within one
    # binomial SE of the best val, the fewest blocks, then the fewest features, then the best val
    best_val = max(c["val"] for c in search)
    se = np.sqrt(best_val * (1 - best_val) / rep["n"]["val"])
    within = [c for c in search if c["val"] >= best_val - se - 1e-12]
    want = min(within, key=lambda c: (c["n_blocks"], c["n_features"], -c["val"]))
    got = {k: rep["stc"][k] for k in ("n_blocks", "val")}
    assert got == {"n_blocks": want["n_blocks"], "val": want["val"]}
    assert rep["stc"]["no_refit"]["n_features"] == want["n_features"]
    sel = rep["stc"]["selection"]
    assert sel["rule"] == "one_se" and sel["best_val"] == best_val and sel["se"] == pytest.approx(se)
    assert sel["runner_up"] is None or best_val - se - 1e-12 <= sel["runner_up"]["val"]
    assert {c["site"] for c in search} == {"hidden", "ffn", "both"}
    assert all("test" not in c for c in search)
    # best_layer: the same rule over single probes (fewest blocks: hidden l runs l blocks, ffn l l+1)
    layer_best = max(e["val"] for e in rep["layers"])
    se_l = np.sqrt(layer_best * (1 - layer_best) / rep["n"]["val"])
    ok = [e for e in rep["layers"] if e["val"] >= layer_best - se_l - 1e-12]
    blocks = lambda e: e["layer"] if e["site"] == "hidden" else e["layer"] + 1  # noqa: E731
    pick = min(ok, key=lambda e: (blocks(e), e["n_nonzero"], -e["val"]))
    b = rep["baselines"]["best_layer"]
    assert (b["site"], b["layer"], b["val"]) == (pick["site"], pick["layer"], pick["val"])
    last = [e for e in rep["layers"] if e["site"] == "hidden" and e["layer"] == N_LAYERS["hidden"] - 1]
    assert rep["baselines"]["last_layer"]["val"] >= max(e["val"] for e in last) - 0.05
    # test metrics computed once per reported model (winner + 3 baselines), each as the train-only
    # fit and as the refit on train + val, never per layer
    assert rep["test_scored"] == ["stc", "last_layer", "best_layer", "all_layers_concat"]
    assert experiment["test_calls"] == [rep["n"]["test"]] * 8
    for entry in [rep["stc"], *rep["baselines"].values()]:
        assert entry["refit"] is True and {"test", "macro_f1", "n_features"} <= set(entry["no_refit"])
    assert all(e["test"] is None for e in rep["layers"])
    # the signal is learnable: STC is well above chance
    assert rep["stc"]["val"] > 0.8 and rep["stc"]["test"] > 0.75


def _features(store: Path, art: ClassifierArtifact, rows: dict[str, np.ndarray]) -> dict:
    r = open_run(store)
    feats = {}
    for site_code, layer in sorted(set(zip(art.feature_site.tolist(), art.feature_layer.tolist()))):
        site = ("hidden", "ffn")[site_code]
        feats[(site, layer)] = np.concatenate(
            [r.read(s, site, art.pool, layer)[ix].astype(np.float32) for s, ix in rows.items()])
    return feats


@pytest.fixture(scope="module")
def train_only(experiment):
    """The same search with today's-before rules: best val wins, the train-only fit is kept."""
    store = experiment["store"]
    res = CliRunner().invoke(app, [
        "probe", "--store", str(store), "--label", "sentiment", "--split-column", "fold", "--name", "exp0",
        "--c-grid", C_GRID, "--eta-grid", ETA_GRID, "--no-progress", "--no-plots", "--no-concat-baseline",
        "--no-refit", "--selection", "best",
    ])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    exp = store / "run0" / "probes" / "exp0"
    return {"store": store, "exp": exp, "report": json.loads((exp / "report.json").read_text())}


def test_best_rule_without_refit_keeps_the_train_fit(train_only, experiment):
    rep = train_only["report"]
    search = json.loads((train_only["exp"] / "search.json").read_text())
    best_val = max(c["val"] for c in search)
    assert rep["stc"]["val"] == best_val
    # ties go to fewer features
    assert rep["stc"]["n_features"] == min(c["n_features"] for c in search if c["val"] == best_val)
    assert rep["stc"]["refit"] is False and "no_refit" not in rep["stc"]
    assert rep["baselines"]["best_layer"]["val"] == max(e["val"] for e in rep["layers"])
    # the layer probes of the first experiment were reused, and are the same
    assert rep["reused"]["layer_probes"] == len(rep["layers"]) and rep["layers"] == experiment["report"]["layers"]


def _check_classifier(store: Path, exp: Path, rep: dict, refit: bool) -> None:
    folder = exp / "classifier"
    art = ClassifierArtifact.load(folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"]["weight_hash"] == "0123abcd" and cfg["extract"]["max_length"] == 64
    assert cfg["run"] == "run0" and cfg["fingerprint_hash"] and cfg["classes"] == ["neg", "pos"]
    assert (cfg["site"], cfg["pool"], cfg["k"], cfg["eta"], cfg["C"]) == tuple(
        rep["stc"][k] for k in ("site", "pool", "k", "eta", "C"))
    assert cfg["layers"] == {"hidden": rep["stc"]["layers"]["hidden"], "ffn": rep["stc"]["layers"]["ffn"]}
    assert art.n_features == rep["stc"]["n_features"] > 0
    t = load_file(str(folder / "weights.safetensors"))
    # the scaler is the mean and (population) std of the rows it was fitted on, computed here in float64
    fit_rows = _role_rows(store, "train")
    if refit:
        val_rows = _role_rows(store, "val")
        fit_rows = {s: np.concatenate([fit_rows[s], val_rows[s]]) for s in fit_rows}
    fitted = _features(store, art, fit_rows)
    X_fit = np.stack([fitted[(("hidden", "ffn")[s], int(l))][:, i]
                      for s, l, i in zip(t["feature_site"], t["feature_layer"], t["feature_index"])], axis=1)
    np.testing.assert_allclose(t["scaler_mean"], X_fit.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t["scaler_scale"], X_fit.astype(np.float64).std(axis=0), rtol=1e-4)
    labels = {role: np.concatenate([open_run(store).column(s, "sentiment")[ix] for s, ix in _role_rows(store, role).items()])
              for role in ("val", "test")}
    for role in ("test",) if refit else ("val", "test"):
        feats = _features(store, art, _role_rows(store, role))
        X = np.stack([feats[(("hidden", "ffn")[s], int(l))][:, i]
                      for s, l, i in zip(t["feature_site"], t["feature_layer"], t["feature_index"])], axis=1)
        want = ((X - t["scaler_mean"]) / t["scaler_scale"]) @ t["coef"].T + t["intercept"]
        got = art.decision_from_features(feats)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        pred = np.where(want[:, 0] > 0, "pos", "neg")
        # the report's numbers are those of this classifier on those rows
        assert rep["stc"][role] == pytest.approx(np.mean(pred == labels[role]), abs=1e-9)
    from sklearn.metrics import roc_auc_score

    assert rep["stc"]["roc_auc"] == pytest.approx(roc_auc_score(labels["test"] == "pos", want[:, 0]), abs=1e-6)
    cm = rep["stc"]["confusion_matrix"]
    assert cm[1][1] == int(np.sum((pred == "pos") & (labels["test"] == "pos")))


def test_classifier_matches_numpy_recomputation(train_only):
    _check_classifier(train_only["store"], train_only["exp"], train_only["report"], refit=False)


def test_refit_classifier_is_fitted_on_train_and_val(experiment):
    store, rep = experiment["store"], experiment["report"]
    _check_classifier(store, experiment["exp"], rep, refit=True)
    # the refit solves the same L1 problem on train + val as scikit-learn does (its objective, not ours)
    from sklearn.linear_model import LogisticRegression

    from stcstore.probe.solvers.base import l1_logistic_objective

    art = ClassifierArtifact.load(experiment["exp"] / "classifier")
    # the refit's input is every kept neuron of the chosen depth; rebuild it from the search's ranking
    rows = _role_rows(store, "train")
    rows = {s: np.concatenate([rows[s], _role_rows(store, "val")[s]]) for s in rows}
    y = np.concatenate([open_run(store).column(s, "sentiment")[ix] for s, ix in rows.items()]) == "pos"
    feats = _features(store, art, rows)
    X = np.stack([feats[(("hidden", "ffn")[s], int(l))][:, i]
                  for s, l, i in zip(art.feature_site, art.feature_layer, art.feature_index)], axis=1).astype(np.float64)
    Z = (X - X.mean(0)) / X.std(0)
    C = rep["stc"]["C"]
    ours = l1_logistic_objective(Z, y, 2, art.coef, art.intercept, C)
    # l1_ratio=1 is the L1 penalty (scikit-learn >= 1.8, the declared floor)
    sk = LogisticRegression(l1_ratio=1.0, C=C, solver="saga", tol=1e-8, max_iter=20000).fit(Z, y)
    theirs = l1_logistic_objective(Z, y, 2, sk.coef_, sk.intercept_, C)
    # ours was fitted with more columns (the zero ones dropped afterwards), so it can only be as good
    assert ours <= theirs * (1 + 1e-3)
    assert rep["stc"]["no_refit"]["test"] >= 0.7 and rep["stc"]["test"] >= 0.7


def test_refit_from_a_start_reaches_scikit_learns_optimum(experiment):
    """The baselines' refits start from their train-only fits: a start, good or bad, changes the work only."""
    from sklearn.linear_model import LogisticRegression

    from stcstore.probe.blocks import read_features
    from stcstore.probe.refit import refit
    from stcstore.probe.solvers.base import l1_logistic_objective
    from stcstore.probe.solvers.torch_solver import TorchSolver
    from stcstore.probe.splits import resolve_splits

    reader = open_run(experiment["store"])
    plan = resolve_splits(reader, "sentiment", "fold", 0)
    row_maps = {s: plan.row_roles(s, reader.n_rows(s)) for s in plan.store_splits()}
    d = WIDTH["ffn"]
    feats = (np.full(2 * d, 1), np.repeat([0, 1], d), np.tile(np.arange(d), 2))     # ffn layers 0 and 1
    C = 0.3
    tr, va, _ = read_features(reader, plan, row_maps, "mean", *feats, roles=(0, 1))
    X = np.concatenate([tr, va]).astype(np.float64)
    Z = (X - X.mean(0)) / X.std(0)
    y = np.concatenate([plan.y["train"], plan.y["val"]])
    sk = LogisticRegression(l1_ratio=1.0, C=C, solver="saga", tol=1e-8, max_iter=20000).fit(Z, y)
    best = l1_logistic_objective(Z, y, 2, sk.coef_, sk.intercept_, C)
    rng = np.random.default_rng(0)
    starts = [None, (sk.coef_.astype(np.float32), sk.intercept_.astype(np.float32)),
              (rng.normal(size=(1, 2 * d)) * 3, rng.normal(size=1))]
    for init in starts:
        r = refit(TorchSolver(), reader, plan, row_maps, "mean", *feats, C, init=init)
        coef = np.zeros((1, 2 * d))
        coef[:, r.cols] = r.coef
        ours = l1_logistic_objective(Z, y, 2, coef, r.intercept, C)
        assert abs(ours - best) <= 1e-3 * best, (init is None, ours, best)


def test_outputs_written_twice(experiment):
    exp, out = experiment["exp"], experiment["out"]
    for folder in (exp, out):
        names = {p.name for p in folder.iterdir()}
        assert {"report.json", "search.json", "classifier", "accuracy_per_layer.png", "neurons_kept.png",
                "confusion_matrix.png"} <= names
        assert not {"_checkpoints", "_probe.lock", "experiment.json"} & {p.name for p in out.iterdir()}
        for png in ("accuracy_per_layer.png", "neurons_kept.png", "confusion_matrix.png"):
            assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == experiment["report"]
    assert "exp1" in open_run(experiment["store"]).experiments()


def test_second_experiment_reuses_cache_without_the_model(experiment, tmp_path):
    """Another label and grid on the same rows: statistics come from the cache; no model code runs."""
    store = experiment["store"]
    code = textwrap.dedent(f"""
        import sys
        from stcstore.cli import app
        try:
            app(["probe", "--store", {str(store)!r}, "--label", "topic", "--split-column", "fold",
                 "--name", "exp2", "--eta-grid", "0.5,1", "--c-grid", "0.1,1", "--no-concat-baseline", "--pools", "mean",
                 "--no-progress", "--no-plots"], standalone_mode=False)
        finally:
            # (transformers itself may be imported by the CLI's logging setup; loading a model needs these)
            print("MODEL_CODE", any(m in sys.modules for m in ("stcstore.extract", "stcstore.models")))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "MODEL_CODE False" in res.stdout
    rep2 = json.loads((store / "run0" / "probes" / "exp2" / "report.json").read_text())
    n_blocks = sum(N_LAYERS.values())          # one pool
    assert rep2["cache"]["key"] == experiment["report"]["cache"]["key"]
    # every block's statistics once, and the two layer baselines' again when their test rows are read
    assert rep2["cache"] == {"key": rep2["cache"]["key"], "hits": n_blocks + 2, "misses": 0}
    assert rep2["classes"] == [0, 1, 2] and len(ClassifierArtifact.load(store / "run0" / "probes" / "exp2" / "classifier").classes) == 3
    assert ClassifierArtifact.load(store / "run0" / "probes" / "exp2" / "classifier").n_out == 3
    assert rep2["baselines"]["all_layers_concat"] is None
    assert rep2["stc"]["val"] > 0.8
    assert {"exp1", "exp2"} <= set(open_run(store).experiments())


def _paths(search: list[dict]) -> dict[tuple, list[tuple[float, float]]]:
    """Each (site, pool, eta, k) path's (C, val) in ascending C."""
    out: dict[tuple, list[tuple[float, float]]] = {}
    for e in search:
        out.setdefault((e["site"], e["pool"], e["eta"], e["k"]), []).append((e["C"], e["val"]))
    return {k: sorted(v) for k, v in out.items()}


def test_c_stop_ends_the_paths_that_turned_down_and_only_those(experiment):
    """--c-stop 0 fits every C; --c-stop 0.3 ends each path at its first C whose val is over 0.3
    binomial standard errors below the path's best so far (recomputed here from search.json)."""
    store = experiment["store"]
    common = ["probe", "--store", str(store), "--label", "sentiment", "--split-column", "fold", "--pools", "mean",
              "--c-grid", "0.01,0.1,0.3,1", "--eta-grid", ETA_GRID, "--no-progress", "--no-plots",
              "--no-concat-baseline"]
    runs = {}
    for name, n_se in (("full", "0"), ("cut", "0.3")):
        res = CliRunner().invoke(app, [*common, "--name", name, "--c-stop", n_se])
        assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
        exp = store / "run0" / "probes" / name
        runs[name] = (json.loads((exp / "report.json").read_text()), json.loads((exp / "search.json").read_text()))
    (full, full_search), (cut, cut_search) = runs["full"], runs["cut"]
    grid = [0.01, 0.1, 0.3, 1.0]
    assert (full["c_stop"], cut["c_stop"]) == (0.0, 0.3)
    assert full["n_configs"] == len(full_search) and cut["n_configs"] == len(cut_search)
    assert all([c for c, _ in path] == grid for path in _paths(full_search).values())
    n_val = cut["n"]["val"]
    ended = 0
    for key, path in _paths(cut_search).items():
        assert [c for c, _ in path] == grid[:len(path)], key          # a prefix of the grid, never a gap
        best, stopped = -1.0, False
        for _, val in path:
            assert not stopped, key
            best = max(best, val)
            stopped = val < best - 0.3 * math.sqrt(best * (1 - best) / n_val)
        assert stopped or len(path) == len(grid), key                  # no path ends before the rule fires
        ended += len(path) < len(grid)
    assert ended > 0 and len(cut_search) < len(full_search)
    keys = {tuple(e[k] for k in ("site", "pool", "eta", "k", "C")) for e in full_search}
    assert all(tuple(e[k] for k in ("site", "pool", "eta", "k", "C")) in keys for e in cut_search)
    # other --c-stop under the same name: refused, naming it
    res = CliRunner().invoke(app, [*common, "--name", "cut", "--c-stop", "1"])
    assert res.exit_code == 2 and "c_stop" in res.stderr, res.stderr


# -- bad input: one line, exit 2, nothing written --------------------------------------------------
@pytest.fixture(scope="module")
def small_stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    good = build_store(base / "good.zarr", {"train": 120}, sites=("hidden",), pools=("mean",))
    partial = build_store(base / "partial.zarr", {"train": 200}, sites=("hidden",), pools=("mean",), complete=False)
    return good, partial


@pytest.mark.parametrize("case", ["unknown-label", "one-class", "unknown-run", "incomplete", "bad-split-values",
                                  "bad-name", "bad-grid", "bad-c-stop"])
def test_bad_input_one_line_exit_2_nothing_written(small_stores, case):
    good, partial = small_stores
    args = {
        "unknown-label": (good, ["--label", "nope"], "label column 'nope' is not stored"),
        "one-class": (good, ["--label", "one"], "single class"),
        "unknown-run": (good, ["--label", "sentiment", "--run", "other"], "run 'other' not in store"),
        "incomplete": (partial, ["--label", "sentiment"], r"not fully extracted \(3/4 windows, 75%\)"),
        "bad-split-values": (good, ["--label", "sentiment", "--split-column", "badfold"], "'holdout'"),
        "bad-name": (good, ["--label", "sentiment", "--name", "../escape"], "--name"),
        "bad-grid": (good, ["--label", "sentiment", "--eta-grid", "0.5,1.5"], "--eta-grid"),
        "bad-c-stop": (good, ["--label", "sentiment", "--c-stop", "-1"], r"--c-stop takes .* >= 0"),
    }[case]
    store, extra, pattern = args
    name = [] if "--name" in extra else ["--name", "x"]
    before = _tree(store)
    res = CliRunner().invoke(app, ["probe", "--store", str(store), *name, *extra, "--no-progress"])
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert _tree(store) == before
    assert not (store / "run0" / "probes").exists()


def test_bad_input_through_a_real_process(small_stores):
    good, _ = small_stores
    before = _tree(good)
    res = subprocess.run([sys.executable, "-m", "stcstore", "probe", "--store", str(good), "--label", "one"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "single class" in res.stderr
    assert _tree(good) == before


# -- out of core -------------------------------------------------------------------------------------
_RSS_WRAPPER = """
import resource, subprocess, sys
res = subprocess.run([sys.executable, "-m", "stcstore", "probe", *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(res.stderr)
print(res.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@needs_solver
def test_peak_memory_does_not_grow_with_rows(tmp_path):
    """Peak RSS with 4N rows exceeds that with N rows by less than one 4N-row float32 layer block."""
    N, d = 2000, 1536
    peaks = {}
    for n in (N, 4 * N):
        store = build_store(tmp_path / f"s{n}.zarr", {"train": n}, sites=("hidden",), pools=("mean",),
                            n_layers={"hidden": 2}, width={"hidden": d}, chunk_rows=None, seed=1)
        res = subprocess.run(
            [sys.executable, "-c", _RSS_WRAPPER, "--store", str(store), "--label", "sentiment", "--no-concat-baseline",
             "--no-plots", "--no-progress", "--c-grid", "0.003,0.01", "--eta-grid", "0.5,1",
             # the batched torch solver keeps memory flat; sklearn's liblinear copies X to float64
             "--backend", "torch"],
            capture_output=True, text=True, cwd=REPO, timeout=600)
        rc, kib = res.stdout.split()
        assert rc == "0", res.stderr
        peaks[n] = int(kib) * 1024
    block = 4 * N * d * 4
    growth = peaks[4 * N] - peaks[N]
    print(f"peak RSS {peaks[N] / 2**20:.0f} MiB (N) vs {peaks[4 * N] / 2**20:.0f} MiB (4N); "
          f"growth {growth / 2**20:.1f} MiB, one block {block / 2**20:.1f} MiB")
    assert growth < block


def test_test_predictions_are_those_the_report_scores(experiment):
    rep = experiment["report"]
    preds = json.loads((experiment["exp"] / "test_predictions.json").read_text())
    y = np.array(preds["y"])
    assert preds["classes"] == rep["classes"] and len(y) == rep["n"]["test"]
    entries = {"stc": rep["stc"], **rep["baselines"]}
    assert set(preds["models"]) == set(entries) | {f"{k}_no_refit" for k in entries}
    for name, entry in entries.items():
        assert entry["test"] == pytest.approx(np.mean(np.array(preds["models"][name]) == y), abs=1e-12)
        assert entry["no_refit"]["test"] == pytest.approx(
            np.mean(np.array(preds["models"][f"{name}_no_refit"]) == y), abs=1e-12)
