"""Progress of long loops: a tqdm bar in a terminal, a plain line every so often anywhere else."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Optional, TextIO

__all__ = ["progress_bar", "LogProgress", "log_interval_s"]

# logs, CI and nohup get a line this often (seconds); STCSTORE_PROGRESS_INTERVAL overrides it
_DEFAULT_INTERVAL_S = 30.0


def log_interval_s() -> float:
    """Seconds between progress lines when stderr is not a terminal (STCSTORE_PROGRESS_INTERVAL, default 30)."""
    try:
        return max(0.0, float(os.environ.get("STCSTORE_PROGRESS_INTERVAL", _DEFAULT_INTERVAL_S)))
    except ValueError:
        return _DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    """The slice of tqdm's interface our loops use, writing one plain line every `interval_s` seconds.

    A bar redrawn with carriage returns is unreadable in a log file; these lines are not. The
    rate is the average since the start (rows done now / time since the start), the same number
    a summary reports at the end.
    """

    def __init__(self, total: Optional[int] = None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, interval_s: Optional[float] = None, file: Optional[TextIO] = None,
                 **_ignored: Any) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.disable = disable
        self.interval_s = log_interval_s() if interval_s is None else interval_s
        self.file = file
        self.postfix = ""
        self.start_t = self._last = time.monotonic()
        self._closed = False

    # -- the tqdm calls ----------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Count n more units; write a line when the interval has passed."""
        if self.disable:
            return
        self.n += n
        if time.monotonic() - self._last >= self.interval_s:
            self._write()

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        """Write the final line (when anything was counted) once."""
        if self._closed or self.disable:
            return
        self._closed = True
        if self.n > self.initial:
            self._write(final=True)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the line ----------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start_t

    def line(self, final: bool = False) -> str:
        """'<desc>: 300/1,000 row (30%), 12.5 row/s, 0:24 elapsed, ~0:56 left[, postfix]'."""
        elapsed = self.elapsed
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else math.nan
        parts = [f"{self.n:,}/{self.total:,} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")
                 if self.total is not None else f"{self.n:,} {self.unit}"]
        if rate == rate:  # not NaN
            parts.append(f"{rate:,.1f} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} elapsed" + (" (done)" if final else ""))
        if not final and self.total and rate and rate > 0:
            parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _write(self, final: bool = False) -> None:
        self._last = time.monotonic()
        stream = self.file or sys.stderr
        stream.write(self.line(final) + "\n")
        stream.flush()


def progress_bar(total: Optional[int] = None, *, desc: str = "", unit: str = "it", enabled: bool = True,
                 initial: int = 0, file: Optional[TextIO] = None, **tqdm_kwargs: Any) -> Any:
    """A progress display for a long loop: tqdm when `file` (default stderr) is a terminal, else LogProgress.

    Both take update(n), set_description, set_postfix_str, close and `with`. A disabled one does nothing.
    """
    stream = file or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if enabled and isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True,
                    **tqdm_kwargs)
    return LogProgress(total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=file)
