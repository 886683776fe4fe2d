"""Predicting whole inputs (what `stcstore predict` calls): the rows' results and writing them out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from .features import as_texts

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = ["Predictions", "OUT_FORMATS", "check_out_path", "write_predictions", "predict_texts", "load_inputs",
           "predict_data"]


class _SplitTexts:
    """The texts of a source split as a lazily read sequence (only slices are read)."""

    def __init__(self, split: Any):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: slice) -> list[str]:
        start, stop, _ = item.indices(len(self.split))
        return self.split.texts(start, stop)


@dataclass
class Predictions:
    """Labels, decision values and probabilities of many rows, with where each row came from."""

    classes: list[Any]
    labels: list[Any]                      # (n,) class values (plain Python types)
    decision: np.ndarray                   # (n, n_out): binary n_out = 1 (logit of classes[1])
    proba: np.ndarray                      # (n, n_classes), columns in `classes` order
    texts: Optional[list[str]] = None      # the inputs, when they were given as texts
    split: Optional[list[str]] = None      # per row: the source split (for --data)
    row: Optional[np.ndarray] = None       # per row: its position in its split (for --data)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def records(self, proba: bool = True, decision: bool = False) -> Iterable[dict[str, Any]]:
        """One dict per row: [split, row | text], label, proba (list in `classes` order), decision."""
        for i, label in enumerate(self.labels):
            rec: dict[str, Any] = {}
            if self.split is not None:
                rec["split"] = self.split[i]
                rec["row"] = int(self.row[i])
            if self.texts is not None:
                rec["text"] = self.texts[i]
            rec["label"] = label
            if proba:
                rec["proba"] = [float(p) for p in self.proba[i]]
            if decision:
                d = self.decision[i]
                rec["decision"] = float(d[0]) if d.shape[0] == 1 else [float(v) for v in d]
            yield rec

    def to_json(self, proba: bool = True) -> dict[str, Any]:
        """The `--json` document: {"classes", "n", "predictions": [{..., "label", "proba", "decision"}]}."""
        return {"classes": list(self.classes), "n": len(self),
                "predictions": list(self.records(proba=proba, decision=True))}

    def to_frame(self, proba: bool = True):
        """A pandas DataFrame: [split, row | text], label, then proba_<class> columns with `proba`."""
        import pandas as pd

        cols: dict[str, Any] = {}
        if self.split is not None:
            cols["split"] = self.split
            cols["row"] = np.asarray(self.row, dtype=np.int64)
        if self.texts is not None:
            cols["text"] = self.texts
        cols["label"] = self.labels
        if proba:
            for j, c in enumerate(self.classes):
                cols[f"proba_{c}"] = self.proba[:, j]
        return pd.DataFrame(cols)


OUT_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def check_out_path(path: str | Path) -> Path:
    """Refuse an output path whose extension is not a known format, or that is a folder (before any work)."""
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext not in OUT_FORMATS:
        raise ConfigError(f"--out {str(path)!r}: unknown extension {ext or '(none)'!r}, use one of {', '.join(OUT_FORMATS)}")
    if path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a folder: give a file path ending in {', '.join(OUT_FORMATS)}")
    return path


def write_predictions(preds: Predictions, path: str | Path, proba: bool = False) -> Path:
    """Write predictions by extension: .csv/.tsv/.parquet (a table), .jsonl (one object a row), .json (one document)."""
    import json

    path = check_out_path(path)
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext in (".csv", ".tsv"):
            preds.to_frame(proba).to_csv(tmp, index=False, sep="," if ext == ".csv" else "\t")
        elif ext == ".parquet":
            preds.to_frame(proba).to_parquet(tmp, index=False)
        elif ext == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in preds.records(proba=proba):
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            tmp.write_text(json.dumps(preds.to_json(proba=proba), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write --out {str(path)!r} ({exc}): give a writable file path") from None
    return path


def _plain(values: np.ndarray) -> list[Any]:
    return np.asarray(values).tolist()


def predict_texts(clf: "Predictor", texts: Sequence[str] | str) -> Predictions:
    """Predict texts given directly (kept in the result)."""
    t0 = time.perf_counter()
    texts = list(as_texts(texts))
    dec = clf.decision_raw(texts)
    return Predictions(classes=_plain(clf.classes_), labels=_plain(clf.labels_from_decision(dec)), decision=dec,
                       proba=clf.proba_from_decision(dec), texts=texts, seconds=time.perf_counter() - t0)


def load_inputs(data: str, text_column: str = "text", splits: Optional[Sequence[str]] = None) -> Any:
    """The texts of a csv / jsonl / parquet file, folder, dataset alias or hub id (a `Source`, no other columns)."""
    from ..data import load_source

    return load_source(data, text_column=text_column, columns=(), splits=splits)


def predict_data(clf: "Predictor", data: Any, text_column: str = "text",
                 splits: Optional[Sequence[str]] = None) -> Predictions:
    """Predict every row of every split (in order) of a csv / jsonl / parquet file, folder, alias or hub id
    (or of a `Source` from `load_inputs`)."""
    t0 = time.perf_counter()
    source = load_inputs(data, text_column, splits) if isinstance(data, str) else data
    decs, split_names, rows = [], [], []
    for name, split in source.splits.items():
        decs.append(clf._decide_sequence(_SplitTexts(split), desc=f"predict {name}"))
        split_names += [name] * len(split)
        rows.append(np.arange(len(split), dtype=np.int64))
    dec = np.concatenate(decs) if decs else np.zeros((0, clf.artifact_.n_out), np.float32)
    return Predictions(classes=_plain(clf.classes_), labels=_plain(clf.labels_from_decision(dec)), decision=dec,
                       proba=clf.proba_from_decision(dec), split=split_names, row=np.concatenate(rows),
                       seconds=time.perf_counter() - t0)
