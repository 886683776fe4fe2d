"""The model and data of the slim GPU check, without the bundled model packages (90+ MB of weights).

  python scripts/gpu_assets.py pack DEST    # where the bundled model and data are installed (gpu_wheels.sh):
                                            # DEST/minilm-tokenizer/ (MiniLM's tokenizer, 0.7 MB) and
                                            # DEST/rotten_tomatoes.csv (text,label; the bundled reviews)
  python scripts/gpu_assets.py model ASSETS OUT   # on the GPU machine (gpu_check.sh): OUT/ holds a
                                            # MiniLM-shaped BERT (6 layers, d 384, d_ff 1,536) with
                                            # random weights (seed 0) and that tokenizer

Random weights stand in for MiniLM's on the GPU: every check compares two computations of the
same model (CUDA with a float64 forward or the CPU, the GPU solver with the CPU's), and a
forward's speed does not depend on the weights' values, only on the shapes, which are MiniLM's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# all-MiniLM-L6-v2's config.json (sentence-transformers), the shapes every figure depends on
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                    num_attention_heads=12, max_position_embeddings=512, type_vocab_size=2)


def pack(dest: Path) -> None:
    """Copy MiniLM's tokenizer and write the bundled Rotten Tomatoes reviews as a csv into dest."""
    from stcstore.data.bundled import load_bundled_frame
    from stcstore.models import bundled_model_path

    folder = bundled_model_path("minilm")[0]
    tok = dest / "minilm-tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, tok / name)
    frame, _ = load_bundled_frame("rotten_tomatoes")
    frame[["text", "label"]].to_csv(dest / "rotten_tomatoes.csv", index=False)
    print(f"{tok}/ and {dest / 'rotten_tomatoes.csv'} ({len(frame)} rows)", file=sys.stderr)


def model(assets: Path, out: Path) -> None:
    """Save a MiniLM-shaped BERT with random weights (seed 0) and MiniLM's tokenizer to out."""
    import torch
    import transformers as T

    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return  # made by an earlier step of this check
    torch.manual_seed(0)
    net = T.BertModel(T.BertConfig(**MINILM_SHAPE)).eval()
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out)
    T.AutoTokenizer.from_pretrained(assets / "minilm-tokenizer").save_pretrained(out)
    print(f"{out}/: MiniLM-shaped BERT, random weights (seed 0)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack").add_argument("dest", type=Path)
    m = sub.add_parser("model")
    m.add_argument("assets", type=Path)
    m.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.dest)
    else:
        model(args.assets, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
