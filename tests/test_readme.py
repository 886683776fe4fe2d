"""The README's command synopsis is the command line's own (scripts/readme_synopsis.py)."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("readme_synopsis", REPO / "scripts" / "readme_synopsis.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_synopsis_is_generated_from_the_cli():
    mod = _script()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert mod.current_block(readme) == mod.render(), "run: python scripts/readme_synopsis.py"


def test_synopsis_lists_every_option_of_every_command():
    import typer

    from stcstore.cli import app

    block = _script().render()
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        assert f"stcstore {name}" in block
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert opt in block, (name, opt)
    assert "--version" in block


def test_replace_block_keeps_the_rest(tmp_path):
    mod = _script()
    text = f"intro\n{mod.START}\nold\n{mod.END}\noutro\n"
    out = mod.replace_block(text, "new\n")
    assert out == f"intro\n{mod.START}\nnew\n{mod.END}\noutro\n"
    assert mod.current_block(out) == "new\n"
