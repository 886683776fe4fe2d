"""Extraction under torchrun: one process per GPU (or CPU worker), disjoint windows, one shared store.

The store needs no coordination beyond this module: every window is one chunk along the rows
of every array, the manifest has one commit file per window, and rank 0 creates the run (and
holds the writer lock) before any rank writes. So ranks that write disjoint windows never touch
the same file, and any process can read progress by listing the manifest.

Collectives run on one gloo process group, also when the model runs on CUDA: everything they
carry is a small host object (statuses, window lists, counts) and no tensor ever crosses ranks,
so an NCCL group would only cost GPU memory and a CUDA context per peer. The same calls run on
every rank whatever its share of the windows, so an uneven split cannot deadlock:
  1. after setup      all_gather of a Status: every rank has loaded source and model; rank 0
                      has checked the fingerprint, taken the writer lock (held to the end),
                      opened or created the run and listed the windows still to do.
  2. after opening    all_gather of a Status: the other ranks opened the run rank 0 made (the
                      barrier before any write). Every rank assigns from rank 0's list, never
                      from its own listing of a file system that other nodes are writing to.
  3. at the end       barrier (rank 0 updates its bar from the manifest meanwhile), all_gather
                      of what each rank wrote, all_gather of rank 0's completeness check.
A failed Status makes every rank raise: the failing rank (rank 0 first) its own error, the
others PeerFailedError, which the CLI turns into a quiet exit with the same code. A rank that
fails while writing exits; torchrun then stops the others, and the committed windows stay valid
for a resume with any number of ranks.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from ..errors import ConfigError, StcstoreError, UserError
from ..store.location import Location
from ..store.progress import committed_windows

__all__ = [
    "DistEnv",
    "DistContext",
    "PeerFailedError",
    "Status",
    "assign_windows",
    "detect",
    "rank_device",
    "device_map_memory",
    "RunProgress",
]

Window = tuple[str, int]
# how long a collective waits for the slowest rank (model loading on every rank, the last
# windows of an uneven split) before it gives up; STCSTORE_DIST_TIMEOUT overrides, in seconds
DEFAULT_TIMEOUT_S = 2 * 3600
# how long the ranks that did not fail wait for the one that did to print its error and exit
REPORT_WAIT_S = 60.0
# how long that one then waits, under torchrun, for the others to have exited first
REPORTER_LINGER_S = 10.0
# the store key prefix of the final handshake (DistContext._leave_together)
_LEFT_KEY = "stcstore/left"

log = logging.getLogger(__name__)


class PeerFailedError(StcstoreError):
    """Another rank failed and reported it; this rank stops quietly with the same exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a torchrun job (read from its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: Optional[dict] = None) -> Optional[DistEnv]:
    """The torchrun environment of this process, or None for a single process.

    Read when called (never at import). WORLD_SIZE 1 (torchrun --nproc-per-node 1) is a
    single process: no process group is needed.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ConfigError(
            "WORLD_SIZE, RANK or LOCAL_RANK is not an integer: launch with torchrun, or unset them for one process"
        ) from None
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ConfigError(
            f"RANK {rank} / LOCAL_RANK {local_rank} / WORLD_SIZE {world} are inconsistent: launch with torchrun"
        )
    if world == 1:
        return None
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)


def assign_windows(todo: Sequence[Window], rank: int, world_size: int) -> list[Window]:
    """The windows of `todo` that `rank` of `world_size` writes: round robin over the list.

    A pure function of its arguments: every rank computes it from the same list, so the shares
    are disjoint and together cover `todo` by construction, and are balanced to one window.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return list(todo[rank::world_size])


def rank_device(env: DistEnv, device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when the job runs on CUDA, else the CPU."""
    if device.type != "cuda":
        return device
    n = torch.cuda.device_count()
    if env.local_rank >= n:
        raise ConfigError(
            f"LOCAL_RANK {env.local_rank} but this node has {n} visible GPU(s): use --nproc-per-node {n} or fewer "
            f"(or --device cpu)"
        )
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def device_map_memory(env: Optional[DistEnv], device: torch.device) -> Optional[dict]:
    """`max_memory` for device_map="auto": the GPUs this rank may fill, and its share of RAM.

    One process per node gets every visible GPU (None: accelerate's own limits). With k ranks on
    a node, local rank l gets GPUs l, l+k, l+2k, ... and 1/k of the free RAM, so ranks of one
    node never place layers on the same GPU. `--device cpu` keeps everything in RAM.
    """
    if device.type != "cuda":
        return {"cpu": _free_ram() // (env.local_world_size if env else 1)} if torch.cuda.is_available() else None
    if env is None or env.local_world_size <= 1:
        return None
    n = torch.cuda.device_count()
    mine = list(range(env.local_rank, n, env.local_world_size))
    if not mine:
        raise ConfigError(
            f"--device-map with {env.local_world_size} ranks on a node of {n} GPU(s) leaves local rank "
            f"{env.local_rank} without a GPU: use --nproc-per-node {n} or fewer"
        )
    mem: dict[Any, int] = {i: int(torch.cuda.mem_get_info(i)[0] * 0.9) for i in mine}
    mem["cpu"] = _free_ram() // env.local_world_size
    return mem


def _free_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available * 0.9)


def _exit_with_on_sigterm(code: int) -> None:
    """From now on SIGTERM ends this process with `code`.

    Every rank is on its way out with that code; torchrun sends SIGTERM to the workers still
    running as soon as one has exited, which would otherwise report them as killed.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        for stream in (sys.stderr, sys.stdout):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    signal.signal(signal.SIGTERM, handler)


@dataclass
class Status:
    """What one rank reports at a collective: whether it is fit to go on, and rank 0's plan."""

    rank: int
    host: str = field(default_factory=socket.gethostname)
    ok: bool = True
    exit_code: int = 0
    message: str = ""
    todo: Optional[list[Window]] = None
    resumed: int = 0

    @classmethod
    def failed(cls, rank: int, exc: BaseException) -> "Status":
        code = 2 if isinstance(exc, UserError) else 1
        return cls(rank=rank, ok=False, exit_code=code, message=str(exc) or type(exc).__name__)


class DistContext:
    """The (gloo) process group of an extraction job; a context manager that destroys it on exit."""

    backend = "gloo"

    def __init__(self, env: DistEnv, timeout_s: Optional[float] = None):
        self.env = env
        if timeout_s is None:
            timeout_s = float(os.environ.get("STCSTORE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.group = None
        self._keep = False  # the group outlives the context (a failure report in progress)

    def __enter__(self) -> "DistContext":
        import torch.distributed as dist

        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE is set but {' and '.join(missing)} not: launch with torchrun, or unset WORLD_SIZE and RANK"
            )
        # no CUDA call here: a LOCAL_RANK beyond the visible GPUs is found by rank_device and
        # reported through the group like any other setup error
        dist.init_process_group(backend=self.backend, timeout=self.timeout)
        self.group = dist.group.WORLD
        return self

    def __exit__(self, exc_type, *exc) -> None:
        import torch.distributed as dist

        if dist.is_initialized() and not self._keep:
            if exc_type is None:
                self._leave_together()
            dist.destroy_process_group()
        self.group = None

    def _leave_together(self, limit_s: float = REPORT_WAIT_S) -> None:
        """Wait, through the store, until every rank is past its last collective, then let go.

        A rank closing its connections while a peer still reads the last collective is the likely
        cause of a rank "killed by SIGABRT" after a complete two-node run in CI. The launcher's
        agents hold the store, so a key per rank there leaves nothing in flight. Best effort.
        """
        import torch.distributed as dist

        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"{_LEFT_KEY}/{self.env.rank}", "1")
            store.wait([f"{_LEFT_KEY}/{r}" for r in range(self.env.world_size)],
                       datetime.timedelta(seconds=limit_s))
        except Exception as exc:  # noqa: BLE001 - leaving anyway is all that is left to do
            log.debug("rank %d left without the others: %s", self.env.rank, exc)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order (a collective: every rank must call it)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self, while_waiting: Optional[Callable[[], None]] = None, poll_s: float = 0.5) -> None:
        """Wait for every rank; call `while_waiting` now and then meanwhile (rank 0's progress bar)."""
        import torch.distributed as dist

        work = dist.barrier(group=self.group, async_op=True)
        if while_waiting is not None:
            while not work.is_completed():
                while_waiting()
                time.sleep(poll_s)
        work.wait()

    def check(self, statuses: Sequence[Status], local_exc: Optional[BaseException]) -> None:
        """Go on only if every rank is fit; otherwise raise on every rank.

        The rank that reports the failure (rank 0 if it failed, else the lowest failing rank)
        re-raises its own exception, so exactly one process prints the one-line error; every
        other rank raises PeerFailedError with the same exit code, which the CLI turns into a
        quiet exit.
        """
        failed = [s for s in statuses if not s.ok]
        if not failed:
            return
        first = failed[0]
        _exit_with_on_sigterm(first.exit_code)
        if first.rank == self.env.rank and local_exc is not None:
            if self.env.rank != 0 and isinstance(local_exc, StcstoreError):
                local_exc.args = (f"rank {first.rank} on {first.host}: {local_exc}",)
            # torchrun stops every worker as soon as one exits with an error: the others wait
            # for this process to have printed its error and to be exiting (a barrier at exit)
            self._keep = True
            atexit.register(self._release_peers, self.group)
            raise local_exc
        self._wait_for_reporter()
        raise PeerFailedError(f"rank {first.rank} on {first.host} failed: {first.message}", first.exit_code)

    @staticmethod
    def _release_peers(group) -> None:
        """At exit of the rank that printed the error: let the others go, then leave last."""
        import torch.distributed as dist

        try:
            dist.barrier(group=group)
        finally:
            dist.destroy_process_group()
        if "TORCHELASTIC_RUN_ID" in os.environ:
            # torchrun sends SIGTERM here once the others have exited (each with the same code);
            # the handler then exits with that code, so no rank is reported as killed
            deadline = time.monotonic() + REPORTER_LINGER_S
            while time.monotonic() < deadline:
                time.sleep(0.05)

    def _wait_for_reporter(self, limit_s: float = REPORT_WAIT_S) -> None:
        import torch.distributed as dist

        work = dist.barrier(group=self.group, async_op=True)
        deadline = time.monotonic() + limit_s
        while not work.is_completed() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not work.is_completed():  # the reporter is gone or stuck: leave the group to the exit
            self._keep = True


class RunProgress:
    """The progress bar of a whole run, shown by one process (rank 0, or the only one).

    Its own rows count as it processes them; windows of other ranks count when their commit
    files appear in the manifest, listed at most every `poll_s` seconds. Listing files needs no
    collective, so it cannot deadlock whatever the ranks' shares.
    """

    def __init__(self, layout, run_dir: "Path | Location", run_name: str, todo: Sequence[Window], mine: Iterable[Window],
                 enabled: bool, poll_s: float = 1.0):
        from ..progress import progress_bar

        self.start_t = time.monotonic()
        self._stop_t: Optional[float] = None
        self.layout = layout
        self.run_dir = run_dir  # a local folder or a Location on object storage
        total = sum(layout.splits.values())
        remaining = sum(self._rows(w) for w in todo)
        mine_set = set(mine)
        self._others = {w for w in todo if w not in mine_set}
        self.poll_s = poll_s
        self._last = 0.0
        # smoothing=0: the bar shows the average rate since its start, the definition the summary uses
        self.bar = progress_bar(total, initial=total - remaining, unit="row", enabled=enabled and bool(todo),
                                desc=f"extract {run_name}", smoothing=0)

    def _rows(self, w: Window) -> int:
        start, stop = self.layout.window_bounds(*w)
        return stop - start

    def update(self, rows: int) -> None:
        """Rows this process has just run through the model."""
        self.bar.update(rows)
        self.poll()

    def poll(self, force: bool = False) -> None:
        """Count the windows other ranks have committed since the last look."""
        if not self._others or self.bar.disable:
            return
        now = time.monotonic()
        if not force and now - self._last < self.poll_s:
            return
        self._last = now
        done = set()
        for split in {s for s, _ in self._others}:
            done |= {(split, w) for w in committed_windows(self.run_dir, split)}
        new = self._others & done
        if new:
            self._others -= new
            self.bar.update(sum(self._rows(w) for w in new))

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    @property
    def seconds(self) -> float:
        """Seconds from the start of the rows' work to close (or now): what rows/s divides by."""
        return (self._stop_t if self._stop_t is not None else time.monotonic()) - self.start_t

    def close(self) -> None:
        self.poll(force=True)
        self.bar.close()
        if self._stop_t is None:
            self._stop_t = time.monotonic()
