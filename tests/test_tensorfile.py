"""safetensors files we write follow the umask like their sibling files."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from safetensors.numpy import load_file

from _stc_helpers import hand_artifact
from stcstore.tensorfile import save_tensors


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_tensors_mode_follows_umask_and_round_trips(tmp_path, umask):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], dtype=np.int64)}
    path = save_tensors(arrays, tmp_path / "t.safetensors", metadata={"k": "v"})
    assert _mode(path) == 0o666 & ~umask
    back = load_file(str(path))
    assert set(back) == {"a", "b"} and np.array_equal(back["a"], arrays["a"]) and back["b"].tolist() == [7]


def test_classifier_weights_mode_matches_config(tmp_path, tiny_model, umask):
    folder = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)]).save(tmp_path / "classifier")
    assert _mode(folder / "weights.safetensors") == _mode(folder / "config.json") == 0o666 & ~umask
