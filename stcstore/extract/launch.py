"""`extract --nproc-per-node N`: start the ranks of a distributed extraction with torch's elastic launcher.

torchrun parses its own options by prefix, so `torchrun ... -m stcstore extract ... --run R` stops
with "ambiguous option: --run could match --run-path, --run_path" before stcstore runs (only a `--`
before stcstore's options avoids it). Here stcstore parses every option itself and hands torch's
launch API (`LaunchConfig` + `elastic_launch`, what torchrun calls) a finished command line.

Each rank runs `python -m stcstore [-v] extract <the same options, launch options dropped>`, the
very process plain torchrun starts, so ranks agree, report errors and resume exactly as documented
in `distributed`: rank 0 prints the summary line, the rank that failed prints the one error line.
This process only waits, returns the ranks' exit code, and on Ctrl-C stops every rank (SIGTERM;
committed windows stay valid).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Collection, Iterator, Mapping, Optional, Sequence

from ..errors import ConfigError, StcstoreError

if TYPE_CHECKING:  # typing only: importing them here would load torch with the command line
    import typer
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

__all__ = ["LaunchSpec", "LAUNCH_OPTIONS", "launch", "rank_command", "threads_per_rank"]

BACKENDS = ("c10d", "static", "etcd", "etcd-v2")
C10D_PORT = 29400  # torchrun's default port of a c10d endpoint given without one
RESUME = "rerun the same command to resume after the last committed window"
# the launcher's own chatter (rendezvous details, "Closing process ... via signal") would bury the
# ranks' one-line error or summary; shown with -v
_TORCH_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


@dataclass(frozen=True)
class LaunchSpec:
    """The launch options of `extract` (torchrun's names); `validate` returns the checked, resolved copy."""

    nproc_per_node: Optional[int] = None
    nnodes: int = 1
    node_rank: Optional[int] = None
    rdzv_endpoint: Optional[str] = None
    rdzv_id: Optional[str] = None
    rdzv_backend: Optional[str] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None

    @property
    def requested(self) -> bool:
        """Whether any launch option was given (the command then starts ranks, or refuses)."""
        return self != LaunchSpec()

    @property
    def world_size(self) -> int:
        """Ranks of the whole job."""
        return (self.nproc_per_node or 1) * self.nnodes

    def validate(self, environ: Optional[Mapping[str, str]] = None) -> "LaunchSpec":
        """Check the options; raise ConfigError naming the bad one. Backend, endpoint and id are filled in."""
        env = os.environ if environ is None else environ
        n, nodes = self.nproc_per_node, self.nnodes
        if n is None:
            given = [f"--{f.name.replace('_', '-')}" for f in fields(self)
                     if getattr(self, f.name) != getattr(LaunchSpec(), f.name)]
            raise ConfigError(f"{', '.join(given)} needs --nproc-per-node N (the ranks to start on this node)")
        if n < 1:
            raise ConfigError(f"--nproc-per-node must be at least 1, got {n}")
        if nodes < 1:
            raise ConfigError(f"--nnodes must be at least 1, got {nodes}")
        if "RANK" in env or "WORLD_SIZE" in env:
            raise ConfigError(
                "--nproc-per-node starts the ranks itself, but RANK/WORLD_SIZE are set (this process already runs "
                "under torchrun or another launcher): drop --nproc-per-node, or run stcstore without torchrun"
            )
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ConfigError(f"--master-port must be a port number (1-65535), got {self.master_port}")
        static = self.master_addr is not None or self.master_port is not None
        if static and self.rdzv_endpoint is not None:
            raise ConfigError("give either --rdzv-endpoint HOST:PORT or --master-addr/--master-port, not both")
        backend = self.rdzv_backend or ("static" if static else "c10d")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown --rdzv-backend {backend!r}: choose from {','.join(BACKENDS)}")
        if static and backend != "static":
            raise ConfigError(
                f"--master-addr/--master-port belong to the static rendezvous: with --rdzv-backend {backend} give "
                f"--rdzv-endpoint HOST:PORT instead"
            )
        if static and nodes > 1 and self.master_addr is None:
            raise ConfigError(f"--nnodes {nodes} needs --master-addr HOST: node 0's address, the same on every node")
        endpoint = self.rdzv_endpoint
        if static:
            endpoint = f"{self.master_addr or '127.0.0.1'}:{self.master_port or 29500}"
        if endpoint is None and (nodes > 1 or backend not in ("c10d", "static")):
            what = f"--nnodes {nodes}" if nodes > 1 else f"--rdzv-backend {backend}"
            raise ConfigError(
                f"{what} needs --rdzv-endpoint HOST:PORT: an address every node reaches (node 0's, say), "
                f"the same on every node"
            )
        node_rank = self.node_rank
        if backend == "static":
            if node_rank is None and nodes > 1:
                raise ConfigError(f"the static rendezvous needs --node-rank K (0 to {nodes - 1}), a different K on each node")
            node_rank = node_rank or 0
            if not 0 <= node_rank < nodes:
                raise ConfigError(f"--node-rank must be between 0 and {nodes - 1} (--nnodes {nodes}), got {node_rank}")
        elif node_rank is not None:
            raise ConfigError(
                f"--node-rank is for the static rendezvous (--master-addr or --rdzv-backend static); {backend} "
                f"numbers the nodes itself: drop --node-rank"
            )
        run_id = self.rdzv_id
        if endpoint is None:  # one node, no address given: a private rendezvous (torchrun --standalone)
            backend, endpoint, node_rank, run_id = "c10d", "localhost:0", None, run_id or uuid.uuid4().hex
        _check_endpoint(endpoint, static=backend == "static")
        return replace(self, rdzv_backend=backend, rdzv_endpoint=endpoint, node_rank=node_rank,
                       rdzv_id=run_id or "stcstore")


LAUNCH_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(LaunchSpec))


def _check_endpoint(endpoint: str, static: bool) -> None:
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    try:
        _, port = parse_rendezvous_endpoint(endpoint, default_port=-1 if static else C10D_PORT)
    except ValueError as exc:
        raise ConfigError(f"--rdzv-endpoint {endpoint!r} is not HOST:PORT ({exc})") from None
    if port == -1:
        raise ConfigError(f"--rdzv-endpoint {endpoint!r} needs a port with the static rendezvous: HOST:PORT")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (taskset, cgroup cpusets)
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_rank(nproc_per_node: int, environ: Optional[Mapping[str, str]] = None,
                     cores: Optional[int] = None) -> Optional[int]:
    """OMP threads for each rank: cores // N, at least 1; None when OMP_NUM_THREADS is set (kept as is)."""
    env = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in env:
        return None
    return max(1, (cores or _cores()) // nproc_per_node)


def rank_command(ctx: "typer.Context", drop: Collection[str] = LAUNCH_OPTIONS) -> list[str]:
    """`python -m stcstore <root options> <command> <options>` as `ctx` (a typer/click context) parsed them, minus `drop`.

    Only options the user gave are repeated (defaults stay defaults), each as `--name=value`, so a
    value that starts with a dash cannot be read as an option.
    """
    root = _given_options(ctx.parent, drop) if ctx.parent is not None else []
    return [sys.executable, "-u", "-m", "stcstore", *root, ctx.info_name, *_given_options(ctx, drop)]


def _given_options(ctx: "typer.Context", drop: Collection[str]) -> list[str]:
    out: list[str] = []
    for param in ctx.command.params:
        # duck-typed: typer ships its own copy of click, whose classes are not click's
        if param.param_type_name != "option" or param.name in drop or param.name not in ctx.params:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params[param.name]
        name = max(param.opts, key=len)
        if param.count:
            out += [name] * int(value)
        elif param.is_flag:
            if value:
                out.append(name)
            elif param.secondary_opts:
                out.append(max(param.secondary_opts, key=len))
        elif param.multiple:
            out += [f"{name}={v}" for v in value]
        elif value is not None:
            out.append(f"{name}={value}")
    return out


@contextlib.contextmanager
def _environ(**values: Optional[str]) -> Iterator[None]:
    """Set (value) or keep (None) environment variables for the ranks; restore them afterwards."""
    keys = [*values, "TORCHELASTIC_SIGNALS_TO_HANDLE"]  # launch_agent writes that one into os.environ
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _torch_logs_quiet(quiet: bool) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in _TORCH_LOGGERS] if quiet else []
    handler = logging.NullHandler()
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, propagate in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate


def launch(spec: LaunchSpec, command: Sequence[str]) -> int:
    """Run `command` as this node's ranks of the job `spec` describes; return their exit code.

    The ranks print their own summary or error line. A rank killed by a signal (nobody printed
    anything) raises StcstoreError; Ctrl-C or SIGTERM here stops every rank and raises
    KeyboardInterrupt.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if spec.rdzv_endpoint is None or spec.nproc_per_node is None:
        raise ValueError("launch needs a validated LaunchSpec")
    threads = threads_per_rank(spec.nproc_per_node)
    quiet = not logging.getLogger("stcstore").isEnabledFor(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="stcstore-launch-") as logs, \
            _environ(OMP_NUM_THREADS=None if threads is None else str(threads)), _torch_logs_quiet(quiet):
        config = LaunchConfig(
            min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc_per_node,
            run_id=spec.rdzv_id or "stcstore", rdzv_endpoint=spec.rdzv_endpoint, rdzv_backend=spec.rdzv_backend or "c10d",
            rdzv_configs={"rank": spec.node_rank or 0} if spec.rdzv_backend == "static" else {},
            # a failed rank is a user error or a crash that a rerun resumes; restarting would repeat it
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
            # SIGINT stays Python's KeyboardInterrupt here: the agent then stops the ranks with SIGTERM,
            # which ends them silently (torch's own handler would forward SIGINT, and every rank would
            # print "interrupted")
            signals_to_handle="SIGTERM,SIGHUP,SIGQUIT",
        )
        try:
            elastic_launch(config, command[0])(*command[1:])
        except ChildFailedError as exc:
            return _exit_code(exc)
        except SignalException as exc:  # SIGTERM/SIGHUP to this process: the ranks got it too
            raise KeyboardInterrupt(str(exc)) from None
        except RendezvousError as exc:
            raise ConfigError(
                f"the rendezvous at {spec.rdzv_endpoint} failed ({type(exc).__name__}: {exc}): check that every node "
                f"reaches --rdzv-endpoint and uses the same --rdzv-id and --nnodes"
            ) from None
    return 0


def _exit_code(exc: "ChildFailedError") -> int:
    """The exit code of a failed job: the first rank that exited with a code (it printed its error line)."""
    failures = list(exc.failures.items())
    coded = [(rank, f) for rank, f in failures if f.exitcode > 0]
    if coded:
        return min(coded, key=lambda rf: (rf[1].timestamp, rf[0]))[1].exitcode
    # the launcher SIGTERMs the other ranks once one has died, and records them too: the cause is another signal
    rank, f = min(failures, key=lambda rf: (rf[1].exitcode == -signal.SIGTERM, rf[1].timestamp, rf[0]))
    try:
        how = signal.Signals(-f.exitcode).name
    except ValueError:
        how = f"exit code {f.exitcode}"
    raise StcstoreError(f"rank {rank} (pid {f.pid}) was killed by {how}: {RESUME}")
