"""What every command shares: stderr console, logging, and turning errors into one line."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from typing import Callable, List, MutableMapping, Optional, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import StcstoreError, UserError, is_no_room

__all__ = ["err_console", "out_console", "setup_logging", "handle_errors", "print_error", "split_csv", "self_command",
           "STORAGE_OPTION_HELP", "store_location", "quiet_torch_cpp_logs", "passive_openmp_waits",
           "command_process_settings"]


def _console(stderr: bool) -> Console:
    """A console for messages that are printed as they are written."""
    stream = sys.stderr if stderr else sys.stdout
    # Messages carry paths, column names and extras such as `stcstore[gpu]`: rich markup would eat
    # anything in square brackets, so styling is explicit (rich Text), never parsed from strings.
    # Piped output is not hard-wrapped at 80 columns (a suggested command must stay one line):
    # lines wrap only in a terminal, and tables get room to take their natural width.
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=True, emoji=False,
                   width=_PIPED_WIDTH if piped else None)


# wide enough for any table we print; lines themselves are never wrapped (soft_wrap)
_PIPED_WIDTH = 400
# stdout carries only results (labels, tables, JSON); everything else goes to stderr
err_console = _console(stderr=True)
out_console = _console(stderr=False)
F = TypeVar("F", bound=Callable)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the library's log records to stderr."""
    from rich.logging import RichHandler

    logger = logging.getLogger("stcstore")
    logger.handlers.clear()
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # logs, CI, nohup: plain timestamped lines (rich pads every record to the console width)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # third-party chatter (transformers, datasets) stays at warnings
    for name in ("transformers", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # their own progress bars (weight loading, split generation) would clutter stderr
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def print_error(exc: "BaseException | str") -> None:
    """The one stderr line of an error: 'error: <message>', the message printed as it is."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)))


# what is true after Ctrl-C, per command (the function's name); extract and probe resume
_INTERRUPTED = {
    "extract_cmd": "rerun the same command to resume after the last committed window",
    "probe_cmd": "rerun the same command to resume (finished layer probes and aggregations are kept)",
    "demo_cmd": "rerun the same command to resume",
    "rm_cmd": "the run or experiment may be partly deleted: rerun the same command to finish",
}


def handle_errors(fn: F) -> F:
    """Turn a user error into one stderr line and exit 2, any other stcstore error into exit 1.

    A full disk counts as the user's to fix: every write of a store or an experiment is
    atomic or resumed, so the line says to free space and rerun.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print_error(exc)
            raise typer.Exit(2) from None
        except StcstoreError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print(f"interrupted: {_INTERRUPTED.get(fn.__name__, 'nothing was written')}")
            raise typer.Exit(130) from None
        except OSError as exc:
            if not is_no_room(exc):
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            then = _INTERRUPTED.get(fn.__name__, "rerun the same command")
            fix = "raise the file-size limit (ulimit -f)" if exc.errno == errno.EFBIG else "free disk space"
            print_error(f"no room on the disk{where} ({exc.strerror}): {fix}, then {then}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def split_csv(value: str | None) -> tuple[str, ...] | None:
    """'a,b' -> ('a', 'b'); None stays None."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


# --storage-option, shared by every command that takes --store
STORAGE_OPTION_HELP = (
    "Option of a store URL's file system, KEY=VALUE (repeatable; values parse as JSON: anon=true), e.g. "
    "endpoint_url=http://host:9000 for s3://. Credentials also come from the usual environment variables "
    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...)."
)


def store_location(store: str, storage_option: Optional[List[str]]):
    """The Location of `--store` (a folder or a URL) with its `--storage-option`s."""
    from ..store.location import open_location, parse_storage_options

    return open_location(store, parse_storage_options(storage_option))


def self_command() -> str:
    """How to run this stcstore from a fresh shell: `stcstore` when PATH finds this one, else a full path."""
    import shlex
    import shutil
    from pathlib import Path

    # the console script sits next to the interpreter (.venv/bin); a fresh shell has no venv active
    script = Path(sys.executable).parent / ("stcstore.exe" if os.name == "nt" else "stcstore")
    on_path = shutil.which("stcstore")
    if on_path and script.is_file() and Path(on_path).resolve() == script.resolve():
        return "stcstore"
    if script.is_file():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m stcstore"


def command_process_settings(command: Optional[str]) -> None:
    """The process settings a command makes before any library starts threads.

    `probe` tunes glibc's heap (stcstore.heap): large searches keep their peak memory bounded, and
    threads started from here on share one heap. The library itself changes no process setting.
    """
    if command == "probe":
        from ..heap import return_freed_blocks_to_os

        return_freed_blocks_to_os()


def passive_openmp_waits(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """For extraction: idle OpenMP workers of torch sleep at once; True if it set them so.

    By default they spin for a while after each parallel region. During extraction that takes
    the cores our writer thread needs on a small machine. The probe is the opposite case: its
    many small ops per Newton step need workers that wake at once. Passive waits made the whole
    default search take 847 s on two cores, against 501 s with spinning. So only `extract` asks
    for passive waits.
    Does nothing once torch is imported (OpenMP reads the policy once) or when the user set one.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "torch" in sys.modules:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def quiet_torch_cpp_logs(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Without -v, hide torch's C++ warnings in this process and those it starts; True if it set them so.

    When a distributed job ends, torch's agents and ranks leave their TCPStores in no fixed order,
    and whoever leaves last may print "[W ... TCPStore.cpp] recvValueWithTimeout failed ...
    Connection reset by peer" with a C++ stack after the summary line of a run that succeeded.
    C++ errors still show.
    Does nothing once torch is imported (it reads the level once) or when the user set a level.
    """
    env = os.environ if environ is None else environ
    if ("TORCH_CPP_LOG_LEVEL" in env or "torch" in sys.modules
            or logging.getLogger("stcstore").isEnabledFor(logging.INFO)):
        return False
    env["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    return True
