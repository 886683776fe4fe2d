"""`stcstore extract`: parse options into an ExtractConfig and run it."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import typer

from ..config import DEFAULT_CODEC, ExtractConfig
from .app import app
from .common import (STORAGE_OPTION_HELP, err_console, handle_errors, passive_openmp_waits, quiet_torch_cpp_logs,
                     split_csv)

_LAUNCH = "Start the ranks (instead of torchrun)"


@app.command("extract")
@handle_errors
def extract_cmd(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Hub id, local folder, .gguf file, or alias minilm / smollm2."),
    data: str = typer.Option(..., "--data", help="Hub dataset id, csv / jsonl / parquet file, or alias rotten_tomatoes."),
    store: str = typer.Option(..., "--store", help="Zarr store: a folder (created if missing) or a URL (s3://bucket/x.zarr, gs://..., memory://..., any fsspec protocol)."),
    run: Optional[str] = typer.Option(None, "--run", help="Run name inside the store (default: <model>__<data>)."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Source columns to store, comma-separated (default: every scalar column but the text)."),
    split: Optional[List[str]] = typer.Option(None, "--split", help="Only these source splits (repeatable) (default: all)."),
    pool: str = typer.Option("mean,max,first,last", "--pool", help="Poolings, comma-separated."),
    site: str = typer.Option("hidden,ffn", "--site", help="Sites, comma-separated: hidden, ffn."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate to N tokens (default: the model's limit, at most 512)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Rows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU; stored as float16), float32 (computed and stored in full precision), bfloat16, float16."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows of every split."),
    chunk_rows: Optional[int] = typer.Option(None, "--chunk-rows", help="Rows per chunk and resume window (default: about 1 MiB chunks)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own code from the hub."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of the model."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    codec: str = typer.Option(DEFAULT_CODEC, "--codec", help="Codec of the stored activations: lz4 (fast, about 0.97 of raw float16), zstd (0.87, about 5x slower), zstd1, none. Every chunk also carries a crc32c checksum."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="auto: spread a model too large for one GPU over the GPUs and CPU memory (accelerate); also balanced, sequential."),
    storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help=STORAGE_OPTION_HELP),
    break_lock: bool = typer.Option(False, "--break-lock", help="First remove the run's lock if the writer that held it died (checks that its heartbeat stopped; says what it removed)."),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", rich_help_panel=_LAUNCH, help="Start N ranks on this node and extract with all of them, as torchrun would (one per GPU; on CPU each rank gets cores // N threads unless OMP_NUM_THREADS is set)."),
    nnodes: int = typer.Option(1, "--nnodes", rich_help_panel=_LAUNCH, help="Nodes in the job: run the same command on each, with --rdzv-endpoint."),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", rich_help_panel=_LAUNCH, help="This node's number, 0 to nnodes-1 (static rendezvous only)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", rich_help_panel=_LAUNCH, help="HOST:PORT every node reaches (node 0's, say) (default with one node: a private one)."),
    rdzv_id: Optional[str] = typer.Option(None, "--rdzv-id", rich_help_panel=_LAUNCH, help="Job id, the same on every node (default: stcstore)."),
    rdzv_backend: Optional[str] = typer.Option(None, "--rdzv-backend", rich_help_panel=_LAUNCH, help="c10d (default), static (the default with --master-addr), etcd, etcd-v2."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", rich_help_panel=_LAUNCH, help="Static rendezvous: node 0's address (with --node-rank on every node)."),
    master_port: Optional[int] = typer.Option(None, "--master-port", rich_help_panel=_LAUNCH, help="Static rendezvous: node 0's port (default 29500)."),
) -> None:
    """Run a model over a dataset and store pooled activations of every layer (resumable)."""
    # both read once, when torch is imported (stcstore.extract imports it)
    quiet_torch_cpp_logs()
    passive_openmp_waits()  # the writer thread keeps its core
    from ..extract import extract
    from ..store.location import parse_storage_options

    cfg = ExtractConfig(
        model=model, data=data, store=store, run=run, text_column=text_column, columns=split_csv(columns),
        splits=tuple(split) if split else None, pools=pool, sites=site, max_length=max_length,
        batch_size=batch_size, device=device, dtype=dtype, limit=limit, chunk_rows=chunk_rows,
        trust_remote_code=trust_remote_code, revision=revision, progress=not no_progress, device_map=device_map, codec=codec,
        storage_options=parse_storage_options(storage_option), break_lock=break_lock,
    )
    from ..extract.launch import LaunchSpec

    spec = LaunchSpec(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_id, rdzv_backend, master_addr, master_port)
    if spec.requested:  # this process starts the ranks (each runs this command without these options)
        from ..extract.launch import launch, rank_command

        spec = spec.validate()
        if spec.world_size > 1:
            dataclasses.replace(cfg).validate()  # a bad option fails here, before any rank starts
            raise typer.Exit(launch(spec, rank_command(ctx)))
    from ..extract.distributed import PeerFailedError

    try:
        res = extract(cfg)
    except PeerFailedError as exc:  # under torchrun: the failing rank printed the error line
        raise typer.Exit(exc.exit_code) from None
    if res.rank != 0:  # under torchrun rank 0 reports for the whole job
        return
    ranks = f" x {res.world_size} ranks" if res.world_size > 1 else ""
    err_console.print(
        f"run {res.run} in {res.store}: {res.rows_total:,} rows "
        f"({res.rows_done_now:,} now, {res.windows_resumed} windows resumed), {res.truncated:,} truncated; "
        f"{res.rows_per_s:,.1f} rows/s, {res.tokens_per_s:,.0f} tokens/s on {res.device}{ranks} ({res.compute_dtype})",
        highlight=False,
    )
