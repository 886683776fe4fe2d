"""benchmarks/common.py: a partial rerun keeps what an earlier result file measured, in its order."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

# loaded under its own name: the benchmarks folder is not a package, and "common" is too generic
# a module name to put on every test's import path
_spec = importlib.util.spec_from_file_location(
    "benchmarks_common", Path(__file__).resolve().parents[1] / "benchmarks" / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_merge_keeps_the_earlier_order_and_takes_the_new_values(tmp_path) -> None:
    out = tmp_path / "probe_speed-cpu.json"
    out.write_text(json.dumps({
        "figures": {"a": 1.0, "b_3class": 2.0, "c": 3.0},
        "details": {"runs": [1], "runs_3class": [2]},
        "config": {"store": "s", "three_class": {"measured": "old"}, "seconds": 9.0, "quick": False},
    }))
    figures = {"b_3class": 20.0, "d_3class": 40.0}
    details = {"runs_3class": [22]}
    config = {"three_class": {"measured": "new"}, "seconds": 1.0}
    common.merge_earlier("probe_speed", "cpu", False, out, config, figures, details)
    assert list(figures.items()) == [("a", 1.0), ("b_3class", 20.0), ("c", 3.0), ("d_3class", 40.0)]
    assert details == {"runs": [1], "runs_3class": [22]} and list(details) == ["runs", "runs_3class"]
    # this run's duration, never the earlier one's; the earlier parts' settings kept
    assert config == {"store": "s", "three_class": {"measured": "new"}, "seconds": 1.0}
    assert list(config) == ["store", "three_class", "seconds"]


def test_merge_without_an_earlier_file_changes_nothing(tmp_path) -> None:
    figures, details, config = {"x": 1.0}, {}, {"seconds": 2.0}
    common.merge_earlier("probe_speed", "cpu", False, tmp_path / "none.json", config, figures, details)
    assert (figures, details, config) == ({"x": 1.0}, {}, {"seconds": 2.0})
