"""Storage: bytes an extracted store takes on disk, against raw float16 and the naive fp32 pickle.

One `stcstore extract` of MiniLM over Rotten Tomatoes (every site and pooling, the default
float16 store), then:

  disk_over_raw_fp16            whole store directory (activations, row ids, token counts,
                                source columns, metadata, progress) / raw float16 bytes of the
                                activation arrays                                 goal <= 1.0
  disk_over_naive_fp32_pickle   the same store / the same activations pickled as float32 the
                                naive way (one dict of (L, N, width) arrays per site and pool,
                                plus the labels), as users keep them today
  disk_over_raw_fp16_{hidden,ffn}  arrays of one site only, stored / raw
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import dir_bytes, log  # noqa: E402

BENCHMARK = "storage"


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows of Rotten Tomatoes to extract")
    args = p.parse_args(argv)
    common.prepare(args)
    import numpy as np

    from stcstore.config import ExtractConfig
    from stcstore.extract import extract
    from stcstore.store import open_run
    from stcstore.store.info import store_summary

    rows = args.rows or (128 if args.quick else 2000)
    t0 = time.perf_counter()
    with common.scratch_dir(BENCHMARK, args.keep) as scratch:
        store = scratch / "rt.zarr"
        log(f"extracting {rows} rows of rotten_tomatoes with minilm")
        res = extract(ExtractConfig(model="minilm", data="rotten_tomatoes", store=str(store), limit=rows,
                                    device=args.device, progress=False))
        summary = store_summary(store)
        run = summary["runs"][0]
        raw = run["bytes_raw"]
        on_disk = summary["bytes_on_disk"]
        by_site = {}
        for a in run["arrays"]:
            s = by_site.setdefault(a["site"], [0, 0])
            s[0] += a["bytes_stored"]
            s[1] += a["bytes_raw"]

        # the naive way: every (site, pool) as a float32 (L, N, width) array in one pickled dict
        # (dumped array by array into one file, which gives the same bytes as one dict without
        # holding every array in memory at once)
        reader = open_run(store)
        pkl = scratch / "naive.pkl"
        with open(pkl, "wb") as fh:
            pk = pickle.Pickler(fh, protocol=pickle.HIGHEST_PROTOCOL)
            for split in reader.splits:
                for site in reader.sites:
                    for pool in reader.pools:
                        pk.dump(((split, site, pool), reader.read(split, site, pool).astype(np.float32)))
                pk.dump(((split, "label"), reader.column(split, "label")))
        pickle_bytes = dir_bytes(pkl)
        n_values = raw // 2

    figures = {
        "disk_over_raw_fp16": on_disk / raw,
        "disk_over_naive_fp32_pickle": on_disk / pickle_bytes,
        "disk_over_raw_fp16_arrays_only": run["bytes_stored"] / raw,
        **{f"disk_over_raw_fp16_{site}": s / r for site, (s, r) in by_site.items()},
        "bytes_on_disk": on_disk,
        "bytes_raw_fp16": raw,
        "bytes_naive_fp32_pickle": pickle_bytes,
        "bytes_per_row_on_disk": on_disk / rows,
    }
    config = {"model": "minilm", "data": "rotten_tomatoes (bundled)", "rows": rows, "values": n_values,
              "sites": list(reader.sites), "pools": list(reader.pools), "store_dtype": run["arrays"][0]["dtype"],
              "codec": "blosc zstd clevel 3, byte shuffle (stcstore.store.layout.compressor)",
              "chunk_rows": summary["runs"][0]["fingerprint"]["chunk_rows"],
              "extract_seconds": round(res.seconds, 1), "seconds": round(time.perf_counter() - t0, 1)}
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
