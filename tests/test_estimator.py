"""STCClassifier, the scikit-learn estimator on raw texts: params, cached refits, save/load, ROC AUC, Pipeline."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import sklearn.base
from sklearn.metrics import roc_auc_score

from stcstore.classifier.estimator import STCClassifier
from stcstore.errors import ConfigError, LabelError, UserError

# a small search: one pooling and site, two C and two eta values
QUICK = dict(pools=("mean",), sites=("ffn",), c_grid=(0.1, 1.0), eta_grid=(0.5, 1.0), concat_baseline=False,
             progress=False, device="cpu", backend="torch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STCSTORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class ForwardCounter:
    """Counts batches the model runs through (every forward of extract and predict goes through
    `ActivationCapture.run`); the real method still runs."""

    def __init__(self, monkeypatch):
        from stcstore.extract.capture import ActivationCapture

        self.calls = 0
        real = ActivationCapture.run

        def run(cap, batch):
            self.calls += 1
            return real(cap, batch)

        monkeypatch.setattr(ActivationCapture, "run", run)


def _word_reviews(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    words = "good bad great awful movie plot actor scene boring brilliant dull fun story music".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice([3, 6, 10]))) for _ in range(n)]
    return texts, np.array(["pos" if "good" in t or "great" in t else "neg" for t in texts])


# -- parameters (no model) --------------------------------------------------------------------
def test_get_params_set_params_and_clone_round_trip():
    est = STCClassifier(model="minilm", pools=("mean", "max"), c_grid=(0.1, 1.0), seed=3, test_size=0.25)
    params = est.get_params()
    assert params["pools"] == ("mean", "max") and params["c_grid"] == (0.1, 1.0) and params["seed"] == 3
    assert set(params) >= {"model", "store", "pools", "sites", "c_grid", "eta_grid", "backend", "device",
                           "batch_size", "max_length", "seed", "dtype"}
    twin = sklearn.base.clone(est)
    assert twin is not est and twin.get_params() == params
    assert STCClassifier(**params).get_params() == params
    twin.set_params(c_grid=(0.03,), backend="sklearn")
    assert twin.c_grid == (0.03,) and twin.backend == "sklearn" and est.c_grid == (0.1, 1.0)
    assert sklearn.base.is_classifier(est)
    tags = est.__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array


def test_unfitted_estimator_refuses_to_predict():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        STCClassifier().predict(["a text"])


@pytest.mark.parametrize("kwargs, X, y, error", [
    (dict(val_size=0.6, test_size=0.4), ["a", "b"], [0, 1], ConfigError),
    (dict(test_size=0.0), ["a", "b"], [0, 1], ConfigError),
    ({}, ["a", "b", "c"], [0, 1], ConfigError),
    ({}, ["a", 5], [0, 1], ConfigError),
    ({}, ["a", "b"], [1, 1], LabelError),
    ({}, ["a", "b"], ["x", ""], ConfigError),
    ({}, ["a", "b"], [1.0, float("nan")], ConfigError),
    ({}, ["a", "b"], [[0], [1]], ConfigError),
    (dict(pools=("median",)), ["a", "b"], [0, 1], ConfigError),
    (dict(c_grid="big"), ["a", "b"], [0, 1], ConfigError),
    (dict(backend="gpu-magic"), ["a", "b"], [0, 1], ConfigError),
    (dict(eta_grid=(1.5,)), ["a", "b"], [0, 1], ConfigError),
    (dict(selection="luck"), ["a", "b"], [0, 1], ConfigError),
])
def test_user_mistakes_fail_before_any_work(cache, kwargs, X, y, error):
    with pytest.raises(error) as got:
        STCClassifier(**{**QUICK, **kwargs}).fit(X, y)
    assert isinstance(got.value, UserError)
    assert not cache.exists()           # nothing written, nothing extracted


def test_x_val_without_y_val_is_refused(cache):
    with pytest.raises(ConfigError, match="X_val and y_val"):
        STCClassifier(**QUICK).fit(["a", "b"], [0, 1], X_val=["c"])


# -- fitting a tiny model ----------------------------------------------------------------------
def test_given_val_is_used_and_other_labels_reuse_the_activations(cache, tiny_model, monkeypatch):
    texts, y = _word_reviews(160, seed=0)
    val_texts, y_val = _word_reviews(40, seed=1)
    counter = ForwardCounter(monkeypatch)
    est = STCClassifier(model=str(tiny_model("bert")), **QUICK, seed=5)
    est.fit(texts, y, X_val=val_texts, y_val=y_val)
    first = counter.calls
    assert first > 0
    # the given val rows are val, the rest is train and a stratified, seeded test
    assert (est.split_[160:] == "val").all() and "val" not in set(est.split_[:160])
    assert est.report_["n"] == {"train": int((est.split_ == "train").sum()), "val": 40, "test": 32}
    for cls in ("pos", "neg"):
        share = np.mean(y[est.split_[:160] == "test"] == cls)
        assert abs(share - np.mean(y == cls)) < 0.05
    assert est.classes_.tolist() == ["neg", "pos"]
    assert est.predict(texts[:5]).tolist()[0] in ("neg", "pos")
    first = counter.calls                       # the extraction and that prediction

    # other labels on the same texts: a new probe over the same stored activations, no forward
    y2 = (np.char.count(np.concatenate([texts, val_texts]), "movie") > 0).astype(int)
    other = sklearn.base.clone(est).fit(texts, y2[:160], X_val=val_texts, y_val=y2[160:])
    assert counter.calls == first
    assert other.run_ == est.run_ and other.experiment_ != est.experiment_
    assert other.classes_.tolist() == [0, 1]
    # a different seed carves other test rows from the same texts, without the refit: still no forward
    third = sklearn.base.clone(est).set_params(seed=6, refit=False).fit(texts, y, X_val=val_texts, y_val=y_val)
    assert counter.calls == first
    assert est.report_["stc"]["refit"] is True and third.report_["stc"]["refit"] is False
    assert (third.split_ != est.split_).any() and third.report_["n"] == est.report_["n"]


def test_pipeline_and_cross_val_score_on_a_list_of_texts(cache, tiny_model):
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    texts, y = _word_reviews(160, seed=2)
    texts = [t.upper() for t in texts]
    pipe = make_pipeline(FunctionTransformer(lambda xs: [x.lower() for x in xs]),
                         STCClassifier(model=str(tiny_model("bert")), **QUICK))
    scores = cross_val_score(pipe, texts, y, cv=2)
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))
    pipe.fit(texts, y)
    # the pipeline's score is accuracy of its predictions on the lowered texts
    pred = pipe.predict(texts)
    assert pipe.score(texts, y) == pytest.approx(np.mean(pred == y))
    assert pipe.predict(texts).tolist() == pipe[-1].predict([t.lower() for t in texts]).tolist()


# -- MiniLM on 1,000 Rotten Tomatoes rows --------------------------------------------------------
@pytest.fixture(scope="module")
def rt_rows():
    from stcstore.data import load_source

    split = load_source("rotten_tomatoes").splits["train"]
    texts, labels = split.texts(0, len(split)), split.column("label")
    idx = np.random.default_rng(0).permutation(len(split))[:1100]
    return [texts[i] for i in idx[:1000]], labels[idx[:1000]], [texts[i] for i in idx[1000:]]


@pytest.fixture(scope="module")
def fitted(rt_rows, tmp_path_factory):
    texts, y, _ = rt_rows
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STCSTORE_CACHE", str(tmp_path_factory.mktemp("cache")))
        est = STCClassifier(model="minilm", **QUICK).fit(texts, y)
        yield est


@pytest.mark.slow
def test_refit_of_a_clone_with_another_c_grid_runs_no_forward(fitted, rt_rows, monkeypatch):
    texts, y, _ = rt_rows
    monkeypatch.setenv("STCSTORE_CACHE", str(Path(fitted.store_).parent))
    counter = ForwardCounter(monkeypatch)
    twin = sklearn.base.clone(fitted).set_params(c_grid=(0.03, 0.3))
    twin.fit(texts, y)
    assert counter.calls == 0
    assert twin.run_ == fitted.run_ and twin.report_["c_grid"] == [0.03, 0.3]
    assert twin.report_["stc"]["C"] in (0.03, 0.3)
    # the same settings again: the finished experiment comes back as it was
    again = sklearn.base.clone(fitted).fit(texts, y)
    assert counter.calls == 0 and again.report_ == fitted.report_


@pytest.mark.slow
def test_report_roc_auc_is_sklearn_on_the_classifier_scores_of_the_test_rows(fitted, rt_rows):
    from stcstore.store import open_run

    texts, y, _ = rt_rows
    test = np.flatnonzero(fitted.split_ == "test")
    assert fitted.report_["n"]["test"] == len(test) == 200
    art = fitted.artifact_
    # the classifier's scores on the stored (float16) activations of the test rows: what probe scored
    run = open_run(fitted.store_, fitted.run_)
    feats = {(site, layer): run.read("train", site, art.pool, layer, rows=test).astype(np.float32)
             for site, layers in art.required_layers().items() for layer in layers}
    scores = art.decision_from_features(feats)[:, 0]
    y_test = (y[test] == fitted.classes_[1]).astype(int)
    assert fitted.report_["stc"]["roc_auc"] == pytest.approx(roc_auc_score(y_test, scores), abs=1e-6)
    # recomputed from the texts in float32 the scores move a little, the AUC hardly
    dec = fitted.decision_function([texts[i] for i in test])
    assert roc_auc_score(y_test, dec) == pytest.approx(fitted.report_["stc"]["roc_auc"], abs=0.01)
    assert fitted.report_["stc"]["roc_auc"] > 0.7


@pytest.mark.slow
def test_save_load_gives_the_same_predictions(fitted, rt_rows, tmp_path):
    from typer.testing import CliRunner

    from stcstore.cli.app import app

    new = rt_rows[2]
    folder = fitted.save(tmp_path / "clf")
    back = STCClassifier.load(folder, device="cpu")
    assert back.predict(new).tolist() == fitted.predict(new).tolist()
    np.testing.assert_array_equal(back.predict_proba(new), fitted.predict_proba(new))
    assert back.report_ == fitted.report_ and back.classes_.tolist() == fitted.classes_.tolist()
    assert back.n_layers_used_ == fitted.n_layers_used_ == fitted.artifact_.n_blocks
    # the experiment's own classifier/ (what `stcstore probe` writes) loads too, with its report
    written = STCClassifier.load(fitted.experiment_ / "classifier", device="cpu")
    assert written.report_ == fitted.report_ and written.predict(new).tolist() == fitted.predict(new).tolist()
    # a pickled estimator (joblib workers) leaves its loaded model behind and loads it again
    import pickle

    thawed = pickle.loads(pickle.dumps(fitted))
    assert "_predictor" not in vars(thawed)
    np.testing.assert_array_equal(thawed.decision_function(new[:10]), fitted.decision_function(new[:10]))
    # the folder is the command line's classifier format
    res = CliRunner().invoke(app, ["predict", "--classifier", str(folder), *new[:5]])
    assert res.exit_code == 0, res.output
    assert [line.split("\t")[0] for line in res.output.strip().splitlines()][-5:] == fitted.predict(new[:5]).tolist()
    # score is accuracy; explain's logit is the decision function
    assert fitted.score(new, fitted.predict(new)) == 1.0
    expl = back.explain(new[0])
    assert float(expl.logit[0]) == pytest.approx(float(fitted.decision_function(new[:1])[0]), abs=1e-4)


def test_readme_estimator_example_runs_as_written(cache, tiny_model, tmp_path, monkeypatch):
    import re

    from conftest import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    first = next(b for b in blocks if b.startswith("from stcstore import STCClassifier"))
    second = next(b for b in blocks if b.startswith('clf.report_["stc"]["test"]'))
    # the same code on a tiny local model and a small search (MiniLM's default search is minutes)
    assert 'STCClassifier(model="minilm")' in first
    small = ", ".join(f"{k}={v!r}" for k, v in QUICK.items())
    first = first.replace('STCClassifier(model="minilm")', f'STCClassifier(model=r"{tiny_model("bert")}", {small})')
    texts, labels = _word_reviews(120, seed=4)
    monkeypatch.chdir(tmp_path)
    ns: dict = {"texts": texts, "labels": labels}
    exec(compile(first + second, "README.md", "exec"), ns)
    clf = ns["clf"]
    assert set(clf.predict(texts[:3]).tolist()) <= {"neg", "pos"}
    assert 0 <= clf.report_["stc"]["test"] <= 1
    assert (tmp_path / "clf" / "config.json").is_file() and (tmp_path / "clf" / "report.json").is_file()
