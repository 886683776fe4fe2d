"""The bundled demo: MiniLM over Rotten Tomatoes, extract -> probe -> predict -> explain, resumable.

Everything comes from installed packages (no hub): the `minilm` model alias and the
`rotten_tomatoes` dataset alias. The default (`DEFAULT_ROWS` rows, the first of the corpus,
and a reduced search grid: poolings mean and max, three C, five eta) finishes extract + probe
well within 5 minutes on 2 CPU cores (48 s measured on an idle 2-core machine); `full=True` takes all 12,808 rows and probe's full grid. A run and an experiment already in the store are reused, and an interrupted
extraction resumes where it stopped, so running the demo again is quick.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import ExtractConfig, ProbeConfig
from .errors import ConfigError

__all__ = ["DEFAULT_ROWS", "DEFAULT_DIR", "DEMO_MODEL", "DEMO_DATA", "DemoConfig", "DemoResult", "run_demo",
           "demo_examples"]

log = logging.getLogger(__name__)

DEMO_MODEL = "minilm"
DEMO_DATA = "rotten_tomatoes"
DEMO_LABEL = "label"
DEMO_EXPERIMENT = "demo"
DEFAULT_DIR = "stcstore-demo"
# measured on an idle 2-core machine: extract 21 s + probe 21 s (torch backend), 48 s in all
DEFAULT_ROWS = 3000
# the default demo searches a smaller grid than `stcstore probe` (a quarter of the fits); --full
# searches probe's default grid (every pooling, C and eta)
QUICK_POOLS: tuple[str, ...] = ("mean", "max")
QUICK_C_GRID: tuple[float, ...] = (0.03, 0.1, 0.3)
QUICK_ETA_GRID: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
# used when every corpus row went into the experiment (--full): unseen, hand-written reviews
_HANDWRITTEN = (
    ("A warm, funny and beautifully acted film that earns every one of its tears.", "fresh"),
    ("Tedious, predictable and badly edited; even the talented cast cannot save it.", "rotten"),
)


@dataclass
class DemoConfig:
    """Where the demo writes and how much of the corpus it uses."""

    out: str = DEFAULT_DIR
    store: Optional[str] = None          # default: <out>/store.zarr
    rows: Optional[int] = None           # default: DEFAULT_ROWS; ignored with full
    full: bool = False
    batch_size: int = 32
    device: str = "auto"
    backend: str = "auto"
    progress: bool = True

    def validate(self) -> "DemoConfig":
        if self.rows is not None and self.rows < 50:
            raise ConfigError(f"--rows must be at least 50 (the probe needs train, val and test rows), got {self.rows}")
        if self.full and self.rows is not None:
            raise ConfigError("--full uses every row: drop --rows, or drop --full")
        return self

    @property
    def n_rows(self) -> Optional[int]:
        """Rows to extract (None: all)."""
        return None if self.full else (self.rows or DEFAULT_ROWS)

    @property
    def store_path(self) -> Path:
        return Path(self.store).expanduser() if self.store else Path(self.out).expanduser() / "store.zarr"

    @property
    def run_name(self) -> str:
        # the size is part of the name: another --rows is another run, never a fingerprint clash
        return f"{DEMO_MODEL}__{DEMO_DATA}__{'full' if self.n_rows is None else self.n_rows}"


@dataclass
class DemoResult:
    """What the demo did and where its outputs are."""

    store: Path
    run: str
    experiment: Path                 # <store>/<run>/probes/demo
    classifier: Path                 # <out>/classifier (copy of the experiment's)
    out: Path
    report: dict[str, Any]
    rows: int
    extract_reused: bool
    probe_reused: bool
    timing_s: dict[str, float] = field(default_factory=dict)


def run_demo(config: DemoConfig) -> DemoResult:
    """Extract (or resume) and probe (or reuse) the bundled demo; return the report and paths."""
    from .extract import extract
    from .probe.search import run_probe

    config.validate()
    out = Path(config.out).expanduser()
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    ex = extract(ExtractConfig(
        model=DEMO_MODEL, data=DEMO_DATA, store=str(config.store_path), run=config.run_name, limit=config.n_rows,
        batch_size=config.batch_size, device=config.device, progress=config.progress,
    ))
    timing["extract"] = time.perf_counter() - t0
    extract_reused = ex.rows_done_now == 0

    t1 = time.perf_counter()
    probe = ProbeConfig(
        store=str(config.store_path), run=config.run_name, label=DEMO_LABEL, name=DEMO_EXPERIMENT,
        out=str(out), backend=config.backend, device=config.device, progress=config.progress,
        # the demo's own experiment: another grid (--full) replaces it rather than being refused
        overwrite=True,
    )
    if not config.full:
        probe.pools, probe.c_grid, probe.eta_grid = QUICK_POOLS, QUICK_C_GRID, QUICK_ETA_GRID
    # a finished experiment with these settings is returned as it is; an interrupted one resumes
    res = run_probe(probe)
    report, exp, probe_reused = res.report, res.path, res.finished_before
    timing["probe"] = time.perf_counter() - t1
    timing["total"] = time.perf_counter() - t0
    return DemoResult(
        store=config.store_path, run=config.run_name, experiment=exp, classifier=out / "classifier", out=out,
        report=report, rows=ex.rows_total, extract_reused=extract_reused, probe_reused=probe_reused, timing_s=timing,
    )


def demo_examples(n_used: Optional[int]) -> list[tuple[str, str]]:
    """Two reviews the classifier never saw, with their true labels: one fresh, one rotten.

    From the corpus rows after the first `n_used` (the last fresh and the last rotten one), or
    hand-written ones when every row was used.
    """
    from .data import load_source

    if n_used is None:
        return list(_HANDWRITTEN)
    split = next(iter(load_source(DEMO_DATA, columns=(DEMO_LABEL,)).splits.values()))
    if len(split) <= n_used:
        return list(_HANDWRITTEN)
    labels = split.column(DEMO_LABEL)
    picked: list[tuple[str, str]] = []
    for want in ("fresh", "rotten"):
        for i in range(len(split) - 1, n_used - 1, -1):
            if labels[i] == want:
                picked.append((split.texts(i, i + 1)[0], want))
                break
    return picked if len(picked) == 2 else list(_HANDWRITTEN)
