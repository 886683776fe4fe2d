"""Render the benchmark results (benchmarks/results/*.json) as a markdown table.

    python benchmarks/render_table.py                 # print the headline table
    python benchmarks/render_table.py --all           # every figure
    python benchmarks/render_table.py --quick         # the CI results in results/quick/
    python benchmarks/render_table.py --write-readme  # rewrite README.md between the markers

`--write-readme` replaces what lies between `<!-- bench:start -->` and `<!-- bench:end -->` in
README.md (or --readme PATH); without the markers it prints the table and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# figure (regex, full match) -> (comparison, goal). Model-suffixed variants share the goal.
GOALS: list[tuple[str, str, float]] = [
    (r"extract_over_bare_forward(_excl_load|_cpu_time)?(_smollm2|_minilm)?", "<=", 1.10),
    (r"probe_speedup_vs_sklearn(_\w+)?", ">=", 10.0),
    # the goal: the same val accuracy within 0.5 pt (test is scored once, informative)
    (r"probe_val_gap_pt(_3class)?", "<=", 0.5),
    # the whole default search (every pooling, default grids) on the two cores, in seconds
    (r"whole_search_seconds_\w+", "<=", 300.0),
    (r"rss_ratio_10x_extract(_[a-z]+)?", "<=", 1.15),
    # the probe issue's goal: from N to 10N rows, at most 2 layer blocks more (default backend)
    (r"rss_growth_blocks_10x_probe(_[a-z]+)?", "<=", 2.0),
    # STC never below its own baselines (default selection and refit)
    (r"stc_minus_best_baseline_pt_\w+", ">=", 0.0),
    (r"disk_over_raw_fp16", "<=", 1.0),
    (r"early_exit_over_ideal(_min)?(_minilm|_smollm2)?(_k\d+)?", "<=", 1.2),
    (r"ingest_speedup_2_cores(_amdahl)?", ">=", 1.6),
    (r"ingest_over_projected_h200_forward_minilm", ">=", 1.0),
]

# the figures the issue names, in the order shown (regex, full match); --all shows every figure
HEADLINE: list[str] = [
    r"extract_over_bare_forward(_smollm2)?",
    r"naive_over_bare_forward(_smollm2)?",
    r"extract_over_bare_forward_cpu_time(_smollm2)?",
    r"(rows|tokens)_per_s_(bare|naive|extract)(_smollm2)?",
    r"peak_rss_mb_(naive|extract)(_smollm2)?",
    r"probe_speedup_vs_sklearn(_3class|_full_c_path)?",
    r"probe_speedup_vs_sklearn_cpu_time(_3class|_full_c_path)?",
    r"whole_search_seconds_\w+",
    r"probe_(val|test)_acc_\w+",
    r"probe_(val|test)_gap_pt(_3class)?",
    r"probe_seconds_\w+",
    r"probe_max_rel_gap(_not_settled)?_\w+",
    r"probe_settled_share_\w+",
    r"rss_ratio_10x_(extract|probe)(_[a-z]+)?",
    r"rss_growth_blocks_10x_probe(_[a-z]+)?",
    r"peak_rss_mb_(extract|probe)(_[a-z]+)?_\d+",
    r"peak_rss_mb_probe_\w+",
    r"disk_over_raw_fp16",
    r"disk_over_naive_fp32_pickle",
    r"early_exit_over_ideal(_min)?(_minilm|_smollm2)?",
    r"ingest_rows_per_s_minilm",
    r"ingest_speedup_2_cores(_amdahl)?",
    r"ingest_serial_cpu_fraction_minilm",
    r"ingest_over_projected_h200_forward_minilm",
    r"cores_to_keep_up_h200_(minilm|llama3_8b)",
    r"ingest_rows_per_s_minilm_(lz4|zstd|zstd1|none)_1core",
    r"disk_over_raw_fp16_minilm_(lz4|zstd|zstd1|none)",
    r"rows_per_s_extract_(local|s3)_minilm",
    r"s3_over_local_rows_per_s",
    r"ingest_rows_per_s_(local|s3)_minilm",
    r"ingest_s3_over_local",
    r"stc_minus_best_baseline_pt_\w+",
    r"(rt|debates)_one_se_refit_stc_acc",
    r"pooling_median_rel_err_\w+",
]

ORDER = ["extract_throughput", "probe_speed", "memory_scaling", "storage", "store_ingest", "object_store", "early_exit",
         "pooling_precision", "accuracy"]


def goal_for(name: str):
    for pattern, op, value in GOALS:
        if re.fullmatch(pattern, name):
            return op, value
    return None


def met(value: float, goal) -> str:
    if goal is None:
        return ""
    op, target = goal
    ok = value <= target if op == "<=" else value >= target
    return "yes" if ok else "**no**"


def fmt(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"


def load_results(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if {"benchmark", "device", "figures"} <= set(doc):
            doc["_path"] = path
            docs.append(doc)
    rank = {b: i for i, b in enumerate(ORDER)}
    docs.sort(key=lambda d: (rank.get(d["benchmark"], len(rank)), d["benchmark"], d["device"]))
    return docs


def _selected(figures: dict, show_all: bool) -> list[str]:
    if show_all:
        return list(figures)
    names = []
    for pattern in HEADLINE:
        for name in figures:
            if name not in names and re.fullmatch(pattern, name):
                names.append(name)
    return names


def render(docs: list[dict], show_all: bool = False) -> str:
    if not docs:
        return "_No benchmark results yet: run `benchmarks/run_all.sh`._\n"
    lines = ["| Benchmark | Device | Figure | Value | Goal | Met? |", "|---|---|---|---:|---|---|"]
    machines: dict[str, set] = {}
    for doc in docs:
        for name in _selected(doc["figures"], show_all):
            value = float(doc["figures"][name])
            goal = goal_for(name)
            goal_s = f"{goal[0].replace('<=', '≤').replace('>=', '≥')} {fmt(goal[1])}" if goal else ""
            lines.append(f"| {doc['benchmark']} | {doc['device']} | `{name}` | {fmt(value)} | {goal_s} | {met(value, goal)} |")
        machines.setdefault(doc.get("machine", "?"), set()).add(
            f"{doc['benchmark']}{' (quick)' if doc.get('config', {}).get('quick') else ''} {doc.get('date', '?')[:10]}"
        )
    lines.append("")
    for machine, runs in machines.items():
        lines.append(f"Measured on {machine}: {', '.join(sorted(runs))}.")
    lines.append("Every ratio is taken within one run; absolute times depend on the machine and its load.")
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, table: str) -> bool:
    """Replace the block between the markers; False (nothing written) when they are absent."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        return False
    new = text[: i + len(START)] + "\n" + table + text[j:]
    if new != text:
        readme.write_text(new)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=None, help="folder of result JSON files (default: results/)")
    p.add_argument("--quick", action="store_true", help="read results/quick/ (the CI runs)")
    p.add_argument("--all", action="store_true", help="every figure, not only the headline ones")
    p.add_argument("--write-readme", action="store_true", help="rewrite the block between the bench markers")
    p.add_argument("--readme", type=Path, default=BENCH_DIR.parent / "README.md")
    p.add_argument("--check", action="store_true", help="exit 1 when a figure misses its goal")
    args = p.parse_args(argv)
    folder = args.results or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    docs = load_results(folder)
    table = render(docs, args.all)
    if args.write_readme:
        if write_readme(args.readme, table):
            print(f"wrote the results table into {args.readme}", file=sys.stderr)
        else:
            print(f"{args.readme} has no {START} ... {END} block: printing the table instead", file=sys.stderr)
            sys.stdout.write(table)
    else:
        sys.stdout.write(table)
    if args.check:
        missed = [(d["benchmark"], n) for d in docs for n, v in d["figures"].items()
                  if goal_for(n) and met(float(v), goal_for(n)) != "yes"]
        if missed:
            print("missed goals: " + ", ".join(f"{b}:{n}" for b, n in missed), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
