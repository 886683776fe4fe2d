"""Configuration dataclasses: the CLI fills them, the library takes them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError

__all__ = [
    "POOLS",
    "SITES",
    "DTYPES",
    "DEVICES",
    "DEVICE_MAPS",
    "BACKENDS",
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_C_GRID",
    "DEFAULT_ETA_GRID",
    "ExtractConfig",
    "ProbeConfig",
    "parse_list",
    "parse_bytes",
]

POOLS: tuple[str, ...] = ("mean", "max", "first", "last")
SITES: tuple[str, ...] = ("hidden", "ffn")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
BACKENDS: tuple[str, ...] = ("auto", "sklearn", "torch", "cuml")
# codecs of stored activations (stcstore.store.layout.compressors); the default measured fastest
# at disk <= raw float16 (benchmarks/store_ingest.py)
CODECS: tuple[str, ...] = ("lz4", "zstd", "zstd1", "none")
DEFAULT_CODEC = "lz4"
# C of sklearn's convention (inverse penalty strength), log-spaced.
DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
# cumulative squared-weight share kept per layer; 1.0 keeps every nonzero weight.
DEFAULT_ETA_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def parse_list(value: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Parse a comma-separated option into a tuple, refusing values outside `allowed`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item not in allowed:
            raise ConfigError(f"unknown {what} {item!r}: choose from {','.join(allowed)}")
        if item not in out:
            out.append(item)
    if not out:
        raise ConfigError(f"no {what} given: choose from {','.join(allowed)}")
    return tuple(out)


@dataclass
class ExtractConfig:
    """What `extract` runs: model, data, store and how to batch and store the activations."""

    model: str
    data: str
    store: str
    run: Optional[str] = None
    text_column: str = "text"
    columns: Optional[tuple[str, ...]] = None
    splits: Optional[tuple[str, ...]] = None
    pools: tuple[str, ...] = POOLS
    sites: tuple[str, ...] = SITES
    max_length: Optional[int] = None
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"
    limit: Optional[int] = None
    # rows per chunk and per resume window; None sizes chunks to about 1 MiB
    chunk_rows: Optional[int] = None
    trust_remote_code: bool = False
    revision: Optional[str] = None
    progress: bool = True
    # accelerate's device_map for models larger than one GPU ("auto", "balanced", ...); None: one device
    device_map: Optional[str] = None
    # codec of the stored activations (not in the fingerprint: the numbers read back are the same)
    codec: str = DEFAULT_CODEC
    # fsspec options of a store URL (s3://...: key, secret, endpoint_url, ...), besides the environment
    storage_options: dict = field(default_factory=dict)
    # remove the run's lock first if its writer died (store.lock.break_lock)
    break_lock: bool = False

    def validate(self) -> "ExtractConfig":
        """Check option values; raise ConfigError naming the bad one."""
        self.pools = parse_list(self.pools, POOLS, "pool")
        self.sites = parse_list(self.sites, SITES, "site")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"--max-length must be at least 2, got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown --device {self.device!r}: choose from {','.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}: choose from {','.join(DTYPES)}")
        if not self.text_column:
            raise ConfigError("--text-column is empty: name the column that holds the text")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown --codec {self.codec!r}: choose from {','.join(CODECS)}")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ConfigError(f"unknown --device-map {self.device_map!r}: choose from {','.join(DEVICE_MAPS)}")
        return self

    @property
    def store_dtype(self) -> str:
        """The dtype of stored activations: float32 only when asked for full precision."""
        return "float32" if self.dtype == "float32" else "float16"


SELECTIONS = ("one_se", "best")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: object) -> Optional[int]:
    """'2GB', '512MiB', '1.5e9' or an int -> bytes; None stays None; ValueError when not a size."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        unit = text[len(digits):]
        if unit not in _UNITS or not digits:
            raise ValueError(value)
        n = float(digits) * _UNITS[unit]
    if not n >= 1 or n != n or n == float("inf"):
        raise ValueError(value)
    return int(n)


@dataclass
class ProbeConfig:
    """What `probe` searches: label, splits, solver backend and the C / eta grids."""

    store: str
    label: str
    run: Optional[str] = None
    split_column: Optional[str] = None
    backend: str = "auto"
    name: Optional[str] = None
    out: Optional[str] = None
    sites: Optional[tuple[str, ...]] = None
    pools: Optional[tuple[str, ...]] = None
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    eta_grid: tuple[float, ...] = DEFAULT_ETA_GRID
    # a depth's C path ends once its val accuracy is this many standard errors below its best
    # (probe.c_path); 0 fits every C of the grid
    c_stop: float = 1.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    plots: bool = True
    # the all-layers-concat baseline holds every layer of one site/pool in memory
    concat_baseline: bool = True
    # an experiment of the same name: resume it (default), start it over, or replace other settings
    fresh: bool = False
    overwrite: bool = False
    # how the winner is chosen on val (one_se: the simplest within one standard error of the best)
    selection: str = "one_se"
    # refit the chosen configuration on train + val (the classifier users keep)
    refit: bool = True
    # choose the configuration by K-fold cross-validation over train + val (None: on val)
    cv: Optional[int] = None
    # bytes a probe fit may use on its device ('2GB', '512MiB' or a number); None: a share of what is free
    memory_budget: Optional[int | str] = None
    # fsspec options of a store URL (s3://...: key, secret, endpoint_url, ...), besides the environment
    storage_options: dict = field(default_factory=dict)

    def validate(self) -> "ProbeConfig":
        """A checked copy (sorted grids, parsed lists); raise ConfigError naming the bad option."""
        c = dataclasses.replace(self)
        if c.backend not in BACKENDS:
            raise ConfigError(f"unknown --backend {c.backend!r}: choose from {','.join(BACKENDS)}")
        if c.sites is not None:
            c.sites = parse_list(c.sites, SITES, "site")
        if c.pools is not None:
            c.pools = parse_list(c.pools, POOLS, "pool")
        if not c.c_grid or any(x <= 0 for x in c.c_grid):
            raise ConfigError("--c-grid needs positive values, e.g. 0.01,0.1,1")
        if not c.eta_grid or any(not 0 < e <= 1 for e in c.eta_grid):
            raise ConfigError("--eta-grid needs values in (0, 1], e.g. 0.5,0.8,1.0")
        if isinstance(c.c_stop, bool) or not isinstance(c.c_stop, (int, float)) or not 0 <= c.c_stop < float("inf"):
            raise ConfigError(f"--c-stop takes a number of standard errors >= 0 (0 fits every C), got {c.c_stop!r}")
        c.c_stop = float(c.c_stop)
        if c.device not in DEVICES:
            raise ConfigError(f"unknown --device {c.device!r}: choose from {','.join(DEVICES)}")
        if isinstance(c.seed, bool) or not isinstance(c.seed, int) or not 0 <= c.seed < 2**32:
            raise ConfigError(f"--seed must be a whole number from 0 to 2**32-1, got {c.seed!r}")
        if c.cv is not None and (isinstance(c.cv, bool) or not isinstance(c.cv, int) or c.cv < 2):
            raise ConfigError(f"--cv takes a number of folds of at least 2, got {c.cv!r}")
        if c.cv and not c.refit:
            raise ConfigError("--cv refits the chosen configuration on train + val: drop --no-refit")
        if c.selection not in SELECTIONS:
            raise ConfigError(f"unknown --selection {c.selection!r}: choose from {','.join(SELECTIONS)}")
        try:
            c.memory_budget = parse_bytes(c.memory_budget)
        except ValueError:
            raise ConfigError(f"--memory-budget takes a size such as 2GB, 512MiB or a number of bytes, "
                              f"got {c.memory_budget!r}") from None
        c.c_grid = tuple(sorted(float(x) for x in c.c_grid))
        c.eta_grid = tuple(sorted(float(e) for e in c.eta_grid))
        return c
