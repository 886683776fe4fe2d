"""A synthetic run written with stcstore.store.RunWriter: any number of rows, real layout.

Features are float16 Gaussian noise with a label signal on a few neurons per layer that grows
with depth (so L1 probes keep a sparse set, as on real activations); label strings
'fresh' / 'rotten' like the bundled Rotten Tomatoes column. Written window by window, so
writing 10x the rows does not need 10x the memory.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

MINILM_SHAPE = {"n_layers": 6, "d": 384, "d_ff": 1536}


def write_synthetic_store(store: Path, rows: int, *, run: str = "synthetic", pools: Sequence[str] = ("mean",),
                          sites: Sequence[str] = ("hidden", "ffn"), n_layers: int = 6, d: int = 384,
                          d_ff: int = 1536, chunk_rows: int | None = None, seed: int = 0,
                          signal_neurons: int = 24) -> Path:
    """Create `store` with one run of `rows` rows in split 'train'; return the store path."""
    from stcstore.store import RunLayout, RunWriter, WriterLock, chunk_rows_for, open_root
    from stcstore.store.layout import FORMAT_VERSION
    from stcstore.store.quiet import quiet_zarr

    store = Path(store)
    widths = {"hidden": d, "ffn": d_ff}
    layers = {"hidden": n_layers + 1, "ffn": n_layers}
    chunk = chunk_rows or chunk_rows_for(min(widths[s] for s in sites), "float16", rows)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=rows)
    # which neurons carry the label, per (site, layer), and how strongly (deeper = stronger)
    signal = {(s, l): (rng.choice(widths[s], min(signal_neurons, widths[s]), replace=False),
                       0.03 + 0.12 * l / max(layers[s] - 1, 1))
              for s in sites for l in range(layers[s])}
    layout = RunLayout(splits={"train": rows}, sites=tuple(sites), pools=tuple(pools),
                       n_layers={s: layers[s] for s in sites}, width={s: widths[s] for s in sites},
                       dtype="float16", chunk_rows=chunk)
    fingerprint = {"format_version": FORMAT_VERSION, "model_weight_hash": "synthetic", "model_type": "bert",
                   "tokenizer_hash": "synthetic", "dataset": f"synthetic:{rows}:{seed}",
                   "dataset_content_hash": f"synthetic-{rows}-{seed}", "text_column": "text",
                   "splits": {"train": rows}, "columns": ["label"], "max_length": 512,
                   "truncation_side": "right", "compute_dtype": "float32", "store_dtype": "float16",
                   "pools": list(pools), "sites": list(sites), "chunk_rows": chunk}
    meta = {
        "model": {"spec": "synthetic", "kind": "synthetic", "path": "", "gguf_file": None, "revision": None,
                  "weight_hash": "synthetic", "tokenizer_hash": "synthetic", "model_type": "bert",
                  "family": "bert", "n_layers": n_layers, "d": d, "d_ff": d_ff, "max_positions": 512},
        "dataset": {"spec": "synthetic", "description": f"synthetic {rows} rows", "content_hash": fingerprint["dataset_content_hash"]},
        "extract": {"max_length": 512, "dtype": "auto", "compute_dtype": "float32", "store_dtype": "float16",
                    "truncation_side": "right", "padding_side": "right", "text_column": "text", "batch_size": 32},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    label_names = np.array(["rotten", "fresh"])[labels]
    with quiet_zarr():
        root = open_root(store, create=True)
        run_dir = store / run
        with WriterLock(run_dir, run):
            w = RunWriter(root, run_dir, run)
            w.create(layout, fingerprint, meta, row_ids={"train": np.arange(rows, dtype=np.int64)},
                     columns={"train": {"label": label_names}})
            for win in range(layout.n_windows("train")):
                start, stop = layout.window_bounds("train", win)
                n = stop - start
                y = (2.0 * labels[start:stop] - 1.0).astype(np.float32)
                wr = np.random.default_rng([seed, win])
                pooled = {}
                for s in sites:
                    for p in pools:
                        arr = np.empty((layers[s], n, widths[s]), dtype=np.float16)
                        for l in range(layers[s]):
                            x = wr.standard_normal((n, widths[s]), dtype=np.float32)
                            idx, strength = signal[(s, l)]
                            x[:, idx] += strength * y[:, None]
                            arr[l] = x
                        pooled[(s, p)] = arr
                ntok = wr.integers(5, 60, size=n).astype(np.int32)
                w.write_window("train", win, pooled, ntok, {"rows": n, "tokens": int(ntok.sum()), "truncated": 0, "seconds": 0.0})
    return store
