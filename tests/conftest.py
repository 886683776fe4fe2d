"""Shared fixtures: offline environment, tiny random models built from configs (cached per session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach a hub: fail at once instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]

TINY = dict(hidden=32, ffn=64, layers=2, heads=2)


def tiny_config(family: str):
    """A randomly initialised config of a family, small enough for CPU tests."""
    import transformers as T

    h, f, n, a = TINY["hidden"], TINY["ffn"], TINY["layers"], TINY["heads"]
    vocab = 30522  # the MiniLM (BERT) tokenizer's vocabulary, used for every tiny model
    if family == "bert":
        return T.BertConfig(vocab_size=vocab, hidden_size=h, intermediate_size=f, num_hidden_layers=n, num_attention_heads=a, max_position_embeddings=128)
    if family == "roberta":
        return T.RobertaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=f, num_hidden_layers=n, num_attention_heads=a, max_position_embeddings=130, pad_token_id=0)
    if family == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab, dim=h, hidden_dim=f, n_layers=n, n_heads=a, max_position_embeddings=128, pad_token_id=0)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=h, n_inner=f, n_layer=n, n_head=a, n_positions=128, bos_token_id=101, eos_token_id=102)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[family]
        return cls(vocab_size=vocab, hidden_size=h, intermediate_size=f, num_hidden_layers=n, num_attention_heads=a, num_key_value_heads=a, max_position_embeddings=128, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "distilbert", "gpt2", "llama", "mistral", "qwen2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The bundled MiniLM folder (tokenizer reused by the tiny models)."""
    from stcstore.models import bundled_model_path

    return bundled_model_path("minilm")[0]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_dir):
    """Factory: the folder of a tiny random model of a family (saved once per session)."""
    import torch
    import transformers as T

    cache: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in cache:
            torch.manual_seed(0)
            model = T.AutoModel.from_config(tiny_config(family))
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            model.save_pretrained(folder)
            T.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
            cache[family] = folder
        return cache[family]

    return make


@pytest.fixture(scope="session")
def review_csv(tmp_path_factory) -> Path:
    """A small csv of labelled texts of varied lengths (some longer than 40 tokens)."""
    import random

    rng = random.Random(0)
    words = "good bad great awful movie plot actor scene boring brilliant dull fun story music long short".split()
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    lines = ["text,label,score"]
    for i in range(150):
        n = rng.choice([3, 8, 15, 30, 60])
        text = " ".join(rng.choice(words) for _ in range(n))
        lines.append(f'"{text}",{"pos" if "good" in text else "neg"},{i % 7}')
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m stcstore ...` in a subprocess, capturing output."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "stcstore", *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO)
