"""Object storage: extraction rows/s into a local folder and into a local S3 server, in one run.

The same `stcstore extract` (MiniLM over Rotten Tomatoes, every site and pooling, the default
float16 store) runs into a folder on local disk and into `s3://` on moto's S3 server, started
here on 127.0.0.1 in its own process (it shares the machine's cores with the extraction, as a
MinIO next to a GPU node would not). Local and S3 runs alternate, `--repeats` each; figures are
medians of the extract's own rate (rows over the seconds from its first batch to its last
commit, the progress bar's definition):

  rows_per_s_extract_local_minilm   into a local folder
  rows_per_s_extract_s3_minilm      into s3://bucket/x.zarr (zarr's FsspecStore over s3fs)
  s3_over_local_rows_per_s          the ratio (1.0: object storage costs nothing)
  s3_bytes_over_local_bytes         the store's bytes in the bucket over on disk (same chunks)
  extract_seconds_total_*           the whole call: model and data loading, creating the arrays
                                    (many small PUTs on S3), the rows
  ingest_rows_per_s_{local,s3}_minilm  the store writer alone (no model): whole windows of
                                    MiniLM-shaped float16 activations (hidden + ffn, mean pool,
                                    random values, which lz4 barely shrinks, like real ones),
                                    committed one by one: what a GPU extraction would meet
  ingest_s3_over_local
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

BENCHMARK = "object_store"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen:
    """moto's S3 server in its own process; returns once it answers."""
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto's S3 server did not start")


def _ingest(store: str, n_windows: int) -> float:
    """Rows/s of the store writer alone: whole MiniLM-shaped windows written and committed."""
    import numpy as np

    from stcstore.store import RunLayout, RunWriter, WriterLock, chunk_rows_for, open_root
    from stcstore.store.location import open_location
    from stcstore.store.quiet import quiet_zarr

    width = {"hidden": 384, "ffn": 1536}
    layers = {"hidden": 7, "ffn": 6}
    rows = chunk_rows_for(min(width.values()), "float16", 10**6)
    layout = RunLayout(splits={"train": rows * n_windows}, sites=("hidden", "ffn"), pools=("mean",),
                       n_layers=layers, width=width, dtype="float16", chunk_rows=rows)
    rng = np.random.default_rng(0)
    pooled = {(s, "mean"): rng.standard_normal((layers[s], rows, width[s])).astype(np.float16) for s in width}
    loc = open_location(store)
    with quiet_zarr():
        root = open_root(loc, create=True)
        with WriterLock(loc / "ingest", "ingest"):
            writer = RunWriter(root, loc / "ingest", "ingest")
            writer.create(layout, {"bench": 1}, {"model": {}, "dataset": {}},
                          row_ids={"train": np.arange(rows * n_windows)}, columns={})
            t = time.perf_counter()
            for w in range(n_windows):
                writer.write_window("train", w, pooled, np.full(rows, 20, np.int32), {"rows": rows})
            return rows * n_windows / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows of Rotten Tomatoes to extract")
    args = p.parse_args(argv)
    common.prepare(args)
    rows = args.rows or (128 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    port = _free_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    import boto3

    from stcstore.config import ExtractConfig
    from stcstore.extract import extract
    from stcstore.store.info import store_summary

    t0 = time.perf_counter()
    server = _start_moto(port)
    rates: dict[str, list[float]] = {"local": [], "s3": []}
    seconds: dict[str, list[float]] = {"local": [], "s3": []}
    total: dict[str, list[float]] = {"local": [], "s3": []}
    sizes: dict[str, int] = {}
    try:
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        with common.scratch_dir(BENCHMARK, args.keep) as scratch:
            # a warm-up extraction (model load, tokenizer, first-call costs) that is not counted
            extract(ExtractConfig(model="minilm", data="rotten_tomatoes", store=str(scratch / "warm.zarr"),
                                  limit=min(rows, 64), device=args.device, progress=False))
            for i in range(repeats):
                for kind in ("local", "s3"):
                    if kind == "local":
                        store = str(scratch / f"rt{i}.zarr")
                    else:
                        bucket = f"bench-{uuid.uuid4().hex[:8]}"
                        client.create_bucket(Bucket=bucket)
                        store = f"s3://{bucket}/rt.zarr"
                    log(f"round {i + 1}/{repeats}: {rows} rows of rotten_tomatoes with minilm into {store}")
                    res = extract(ExtractConfig(model="minilm", data="rotten_tomatoes", store=store, limit=rows,
                                                device=args.device, progress=False))
                    rates[kind].append(res.rows_per_s)
                    seconds[kind].append(res.work_seconds)
                    total[kind].append(res.seconds)
                    sizes[kind] = store_summary(store)["bytes_on_disk"]
                    log(f"  {res.rows_per_s:,.1f} rows/s ({res.work_seconds:.1f} s)")
            ingest = {}
            for kind in ("local", "s3"):
                if kind == "local":
                    store = str(scratch / "ingest.zarr")
                else:
                    bucket = f"ingest-{uuid.uuid4().hex[:8]}"
                    client.create_bucket(Bucket=bucket)
                    store = f"s3://{bucket}/ingest.zarr"
                ingest[kind] = _ingest(store, 1 if args.quick else 4)
                log(f"ingest into {store}: {ingest[kind]:,.0f} rows/s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    local, s3 = common.median(rates["local"]), common.median(rates["s3"])
    figures = {
        "rows_per_s_extract_local_minilm": local,
        "rows_per_s_extract_s3_minilm": s3,
        "s3_over_local_rows_per_s": s3 / local,
        "s3_bytes_over_local_bytes": sizes["s3"] / sizes["local"],
        # the whole call: loading the model and data, creating the run's arrays, the rows
        "extract_seconds_total_local_minilm": common.median(total["local"]),
        "extract_seconds_total_s3_minilm": common.median(total["s3"]),
        "ingest_rows_per_s_local_minilm": ingest["local"],
        "ingest_rows_per_s_s3_minilm": ingest["s3"],
        "ingest_s3_over_local": ingest["s3"] / ingest["local"],
    }
    config = {"model": "minilm", "data": "rotten_tomatoes (bundled)", "rows": rows, "repeats": repeats,
              "s3_server": "moto server (python -m moto.server) on 127.0.0.1, same machine",
              "rates_local": rates["local"], "rates_s3": rates["s3"],
              "work_seconds_local": seconds["local"], "work_seconds_s3": seconds["s3"],
              "seconds": round(time.perf_counter() - t0, 1)}
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
