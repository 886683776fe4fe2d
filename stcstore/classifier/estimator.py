"""`STCClassifier`: the scikit-learn estimator from raw texts to an STC classifier.

`fit(texts, y)` extracts the texts into a store (default: a store in the per-user cache,
`fit_store.cache_dir()`), writes the labels and the rows' train/val/test roles beside the
activations, and runs the probe search there; a refit on the same texts and extraction
settings reuses the stored activations (the model never runs again), and one with the same
labels and search settings returns the finished experiment. Predicting goes through a
`Predictor` (the saved classifier bound to its model, early exit), loaded on first use.

    clf = STCClassifier(model="minilm").fit(texts, labels)
    clf.predict(new_texts); clf.predict_proba(new_texts); clf.score(texts, labels)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..config import DEFAULT_C_GRID, DEFAULT_ETA_GRID, POOLS, SITES, ExtractConfig, ProbeConfig
from ..errors import ConfigError
from ..extract.device import dtype_name, resolve_compute_dtype, resolve_device
from .artifact import ClassifierArtifact
from .features import as_texts, check_strings
from .fit_store import (TEXT_COLUMN, assign_roles, cache_dir, clean_labels, run_name, texts_hash,
                        write_fit_columns, write_texts)

__all__ = ["STCClassifier", "REPORT_NAME"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"   # saved beside the classifier's config.json and weights


class STCClassifier(ClassifierMixin, BaseEstimator):
    """Sparsify-then-Classify on a frozen transformer, as a scikit-learn classifier of raw texts.

    Parameters (stored as given; checked in `fit`):
      model        model alias, Hugging Face id, local folder or .gguf file (as `extract --model`)
      store        store folder or URL for the activations; None: `<cache>/store.zarr`
      pools, sites poolings and sites extracted and searched (as `extract --pool / --site`)
      c_grid, eta_grid  the probe search's C and eta values
      c_stop       end a depth's C path once val falls this many standard errors below its best
                   (as `probe --c-stop`; 0 fits every C)
      backend, device   probe solver backend; device of the forward and the solver
      batch_size, max_length, dtype  the forward's batching, truncation and precision
      seed         seeds the stratified carving of val and test from the texts
      val_size     share of the texts carved as the validation split (unless fit gets X_val)
      test_size    share held out as the report's test split (never seen by the search)
      selection    how val picks the winner (as `probe --selection`: one_se or best)
      refit        refit the winner on train + val (as `probe`; False: `--no-refit`)
      concat_baseline, plots  report extras (the concat baseline holds every layer in memory)
      trust_remote_code, revision, progress  as the command line's options

    Fitted attributes: classes_, report_ (report.json's dict), n_layers_used_ (transformer blocks
    the classifier runs: the rest of the model never runs at predict time), artifact_ (the saved
    classifier), store_, run_, experiment_ (where its activations and experiment are), split_
    (per text of fit's X, then X_val: "train", "val" or "test").
    """

    def __init__(
        self,
        model: str = "minilm",
        *,
        store: Optional[str] = None,
        pools: Sequence[str] = POOLS,
        sites: Sequence[str] = SITES,
        c_grid: Sequence[float] = DEFAULT_C_GRID,
        eta_grid: Sequence[float] = DEFAULT_ETA_GRID,
        c_stop: float = 1.0,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        max_length: Optional[int] = None,
        dtype: str = "auto",
        seed: int = 0,
        val_size: float = 0.2,
        test_size: float = 0.2,
        selection: str = "one_se",
        refit: bool = True,
        concat_baseline: bool = True,
        plots: bool = False,
        trust_remote_code: bool = False,
        revision: Optional[str] = None,
        progress: bool = True,
    ):
        self.model = model
        self.store = store
        self.pools = pools
        self.sites = sites
        self.c_grid = c_grid
        self.eta_grid = eta_grid
        self.c_stop = c_stop
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.seed = seed
        self.val_size = val_size
        self.test_size = test_size
        self.selection = selection
        self.refit = refit
        self.concat_baseline = concat_baseline
        self.plots = plots
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.progress = progress

    # -- scikit-learn plumbing -------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # the input is a sequence of strings, not a 2-d array of numbers
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def __getstate__(self) -> dict[str, Any]:
        # the loaded model is not part of the estimator's state: it is loaded again on first use
        state = dict(self.__dict__)
        state.pop("_predictor", None)
        return state

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X: Sequence[str], y: Any, X_val: Optional[Sequence[str]] = None, y_val: Any = None) -> "STCClassifier":
        """Extract (or reuse) the texts' activations, search the probes, keep the winner; returns self."""
        from ..extract.runner import extract
        from ..probe import run_probe

        t0 = time.perf_counter()
        texts = check_strings(as_texts(X), 0)
        labels = clean_labels(y, len(texts), "y")
        if (X_val is None) != (y_val is None):
            raise ConfigError("give both X_val and y_val, or neither (then val is carved from X)")
        n_val_given = 0
        if X_val is not None:
            val_texts = check_strings(as_texts(X_val), 0)
            n_val_given = len(val_texts)
            labels = clean_labels(np.concatenate([labels, clean_labels(y_val, n_val_given, "y_val")]),
                                  len(texts) + n_val_given, "y + y_val")
            texts = texts + val_texts
        self._check_sizes(n_val_given)
        # every option is checked before any work: no extraction ends in a refused search setting
        xcfg = self._extract_config()
        pcfg = self._probe_config(xcfg)
        digest = texts_hash(texts)
        xcfg.run = run_name(xcfg.model, digest, self._extract_identity(xcfg))
        xcfg.data = str(write_texts(texts, cache_dir(), digest))
        t_extract = time.perf_counter()
        extract(xcfg)
        t_extract = time.perf_counter() - t_extract
        roles = assign_roles(labels, n_val_given, self.val_size, self.test_size, self.seed)
        cols = write_fit_columns(xcfg.store, xcfg.run, labels, roles)
        pcfg = _named(dataclasses.replace(pcfg, run=xcfg.run, label=cols.label, split_column=cols.split))
        try:
            result = run_probe(pcfg)
        except ConfigError:
            # the name is a hash of the settings, so a folder of that name with other settings was
            # recorded by another stcstore version: replace it (anything else raises again)
            from ..probe.experiment import SETTINGS_NAME
            from ..store.reader import RunReader

            if not (RunReader(xcfg.store, xcfg.run).probes_dir() / str(pcfg.name) / SETTINGS_NAME).is_file():
                raise
            log.info("replacing experiment %s, recorded with another stcstore's settings", pcfg.name)
            result = run_probe(dataclasses.replace(pcfg, overwrite=True))
        self._set_fitted(result.classifier, result.report)
        self.store_, self.run_, self.experiment_ = xcfg.store, xcfg.run, Path(result.path)
        self.split_ = roles
        self.fit_seconds_ = {"extract": t_extract, "total": time.perf_counter() - t0}
        return self

    def _check_sizes(self, n_val_given: int) -> None:
        for name in ("val_size", "test_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{name} must be a share between 0 and 1 (exclusive), got {v!r}")
        if not n_val_given and self.val_size + self.test_size >= 1:
            raise ConfigError(f"val_size + test_size is {self.val_size + self.test_size:g}: leave rows to train on "
                              f"(their sum must be below 1)")

    def _extract_config(self) -> ExtractConfig:
        """The checked extraction settings (data and run are filled in once the texts are written)."""
        store = str(self.store) if self.store is not None else str(cache_dir() / "store.zarr")
        return ExtractConfig(
            model=str(self.model), data="", store=store, text_column=TEXT_COLUMN, columns=(), splits=None,
            pools=self.pools, sites=self.sites, max_length=self.max_length, batch_size=self.batch_size,
            device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code, revision=self.revision,
            progress=bool(self.progress),
        ).validate()

    @staticmethod
    def _extract_identity(xcfg: ExtractConfig) -> dict[str, Any]:
        """What, beside the texts and the model, tells one fit's run from another's."""
        settings = {k: getattr(xcfg, k) for k in ("pools", "sites", "max_length", "dtype", "revision")}
        # `auto` means another precision on another device, and the run's fingerprint records it
        settings["compute_dtype"] = dtype_name(resolve_compute_dtype(xcfg.dtype, resolve_device(xcfg.device)))
        return settings

    def _probe_config(self, xcfg: ExtractConfig) -> ProbeConfig:
        """The checked probe settings (run, label and split column are filled in after extraction)."""
        return ProbeConfig(
            store=xcfg.store, label="-", backend=self.backend, sites=xcfg.sites, pools=xcfg.pools,
            c_grid=_floats(self.c_grid, "c_grid"), eta_grid=_floats(self.eta_grid, "eta_grid"), c_stop=self.c_stop,
            seed=self.seed, device=self.device, progress=bool(self.progress), plots=bool(self.plots),
            concat_baseline=bool(self.concat_baseline), selection=self.selection, refit=bool(self.refit),
        ).validate()

    def _set_fitted(self, artifact: ClassifierArtifact, report: Optional[dict]) -> None:
        self.artifact_ = artifact
        self.report_ = report
        self.classes_ = np.asarray(artifact.classes)
        self.n_layers_used_ = int(artifact.n_blocks if artifact.n_blocks is not None else
                                  max([l + 1 for ls in artifact.required_layers().values() for l in ls] or [0]))
        self._predictor = None

    # -- the fitted classifier -------------------------------------------------------------
    @property
    def predictor_(self):
        """The `Predictor` (classifier bound to its loaded model), loaded on first use."""
        check_is_fitted(self, "artifact_")
        if getattr(self, "_predictor", None) is None:
            from .predictor import Predictor

            opts = getattr(self, "_load_options", None) or {"model": str(self.model)}
            self._predictor = Predictor.from_artifact(
                self.artifact_, self.device, where=str(getattr(self, "experiment_", "the fitted classifier")),
                batch_size=self.batch_size, trust_remote_code=self.trust_remote_code, **opts)
        return self._predictor

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        """Binary: (n,) logits of classes_[1]; multiclass: (n, K) scores."""
        return self.predictor_.decision_function(X)

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """(n, n_classes) class probabilities, columns in classes_ order."""
        return self.predictor_.predict_proba(X)

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """(n,) class labels (values of classes_)."""
        return self.predictor_.predict(X)

    def explain(self, text: str, centered: bool = False) -> Any:
        """Exact per-token contributions to the decision for one text (`stcstore.explain.Explanation`)."""
        from ..explain.contributions import explain_text

        return explain_text(self.predictor_, text, centered=centered)

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the classifier folder (safetensors + JSON, what `stcstore predict` loads) and its report."""
        check_is_fitted(self, "artifact_")
        path = self.artifact_.save(path)
        if self.report_ is not None:
            tmp = path / f".{REPORT_NAME}.tmp"
            tmp.write_text(json.dumps(self.report_, indent=1, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, path / REPORT_NAME)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", *, model: Optional[str] = None, batch_size: int = 32,
             dtype: Optional[str] = None, trust_remote_code: bool = False, progress: bool = False) -> "STCClassifier":
        """A fitted estimator from a classifier folder (`save`'s or `stcstore probe`'s), its model loaded.

        `model` overrides the recorded model (its weights must match); `dtype` the recorded
        compute dtype (see `Predictor.from_artifact`).
        """
        from .predictor import Predictor

        art = ClassifierArtifact.load(path)
        ext = art.extract or {}
        est = cls(model=str(model or (art.model or {}).get("spec") or ""), pools=(art.pool,),
                  sites=("hidden", "ffn") if art.site == "both" else (art.site,), c_grid=(float(art.C),),
                  eta_grid=(float(art.eta),), device=device, batch_size=batch_size, max_length=ext.get("max_length"),
                  dtype=str(ext.get("dtype") or "auto"), trust_remote_code=trust_remote_code, progress=progress)
        est._set_fitted(art, _saved_report(Path(path).expanduser(), art))
        est._load_options = {"model": model, "dtype": dtype}
        est._predictor = Predictor.from_artifact(art, device, where=str(path), batch_size=batch_size, progress=progress,
                                                 trust_remote_code=trust_remote_code, **est._load_options)
        return est


def _named(pcfg: ProbeConfig) -> ProbeConfig:
    """The probe settings in an experiment named by them: the same labels, roles and settings find
    the same experiment (returned finished on a refit)."""
    ident = {k: v for k, v in dataclasses.asdict(pcfg).items()
             if k not in ("store", "name", "out", "progress", "plots", "fresh", "overwrite")}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return dataclasses.replace(pcfg, name=f"fit-{h}")


def _floats(values: Any, name: str) -> tuple[float, ...]:
    """A grid parameter as a tuple of floats (one number is a grid of one)."""
    items = [values] if isinstance(values, (int, float)) else values
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be numbers, e.g. (0.1, 1.0); got {values!r}") from None


def _saved_report(folder: Path, art: ClassifierArtifact) -> Optional[dict]:
    """The report saved with a classifier: in its folder (`save`), or the experiment's when the folder
    is an experiment's classifier/ of the same run (`stcstore probe`); None when there is none."""
    candidates = [folder / REPORT_NAME]
    if folder.name == "classifier":
        candidates.append(folder.parent / REPORT_NAME)
    for p in candidates:
        try:
            report = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("fingerprint_hash", art.fingerprint_hash) == art.fingerprint_hash:
            return report
    return None
