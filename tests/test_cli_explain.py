"""`stcstore explain` and `predict` on what a user may type: top table, --top, empty texts."""

from __future__ import annotations

import json

import pytest

from _stc_helpers import cli, hand_artifact


@pytest.fixture(scope="module")
def first_pool_clf(tmp_path_factory, tiny_model):
    """A classifier over first-token features: only token 0 contributes, every other token adds 0."""
    folder = tmp_path_factory.mktemp("explain") / "clf"
    return hand_artifact(tiny_model("bert"), "first", [("hidden", 1, 0), ("ffn", 0, 3)]).save(folder)


def _table_rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("│ ").split("│")] for line in stdout.splitlines()
            if line.startswith("│") and line.split("│")[1].strip().isdigit()]


def test_top_table_leaves_out_zero_contributions(first_pool_clf):
    text = "a gripping and beautifully acted film"
    r = cli("explain", text, "--classifier", first_pool_clf, "--device", "cpu", "--top", "10")
    assert r.returncode == 0, r.stderr
    j = json.loads(cli("explain", text, "--classifier", first_pool_clf, "--device", "cpu", "--json").stdout)
    nonzero = [t for t in j["tokens"] if t["contribution"] != 0]
    assert len(nonzero) == 1 and len(j["tokens"]) > 5             # only [CLS] carries the first pooling
    rows = _table_rows(r.stdout)
    assert [(row[1], row[2]) for row in rows] == [(nonzero[0]["token"], "0")]
    assert "top 1 tokens" in r.stdout


@pytest.mark.parametrize("top", ["-3", "-1"])
def test_negative_top_is_refused(first_pool_clf, top):
    r = cli("explain", "fine film", "--classifier", first_pool_clf, "--device", "cpu", "--top", top)
    assert r.returncode == 2, r.stdout
    assert r.stderr.strip().splitlines() == [f"error: --top must be a whole number of table rows, 0 or more, got {top}"]


def test_top_zero_shows_no_table(first_pool_clf):
    r = cli("explain", "fine film", "--classifier", first_pool_clf, "--device", "cpu", "--top", "0")
    assert r.returncode == 0, r.stderr
    assert not _table_rows(r.stdout) and "label:" in r.stdout


@pytest.mark.parametrize("command", ["explain", "predict"])
@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_refused(first_pool_clf, command, text):
    r = cli(command, text, "--classifier", first_pool_clf, "--device", "cpu")
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty text" in lines[0], r.stderr
    assert r.stdout == ""


def test_predict_library_refuses_empty_text(first_pool_clf):
    from stcstore.classifier.predictor import Predictor
    from stcstore.errors import ConfigError

    clf = Predictor.load(first_pool_clf, device="cpu")
    with pytest.raises(ConfigError, match="input 1 is an empty text"):
        clf.predict(["good film", ""])
