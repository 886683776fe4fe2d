"""The package's public names: the README's Python example works after any import order."""

from __future__ import annotations

import importlib
import re

from conftest import REPO


def _readme_block(first_line: str) -> str:
    """The README's ```python block that starts with this line."""
    for block in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no README python block starts with {first_line!r}")


def test_extract_is_the_function_after_the_subpackage_is_imported():
    importlib.import_module("stcstore.extract")          # binds the subpackage on the package
    importlib.import_module("stcstore.extract.runner")
    ns: dict = {}
    exec("from stcstore import ExtractConfig, extract, open_run", ns)
    from stcstore.extract.runner import extract

    assert ns["extract"] is extract
    assert importlib.import_module("stcstore").extract is extract
    # the subpackage itself stays importable by name
    assert importlib.import_module("stcstore.extract").__name__ == "stcstore.extract"


def test_readme_python_example_runs_as_written(tmp_path, tiny_model, review_csv, monkeypatch):
    importlib.import_module("stcstore.extract")
    code = _readme_block("from stcstore import ExtractConfig, extract, open_run")
    # the same code on a tiny local model and csv (the bundled MiniLM over 2,000 reviews is slow)
    assert 'model="minilm", data="rotten_tomatoes"' in code
    assert "layer=3)" in code
    code = code.replace('model="minilm", data="rotten_tomatoes"', f'model=r"{tiny_model("bert")}", data=r"{review_csv}"')
    code = code.replace("layer=3)", "layer=1)")        # the tiny model has two layers
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["res"].rows_total == 150
    assert ns["X"].shape == (150, 64)                    # tiny BERT: d_ff 64
    assert ns["arr"].shape == (3, 150, 32)               # hidden: L+1 entries, d 32
    assert len(ns["y"]) == 150
