"""Progress of long loops: plain periodic lines when stderr is not a terminal."""

from __future__ import annotations

import io
import re
import time

from stcstore.progress import LogProgress, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_log_lines_not_a_bar():
    out = io.StringIO()
    bar = progress_bar(10, desc="probe", unit="step", file=out)
    assert isinstance(bar, LogProgress)
    bar.interval_s = 0.0                       # a line on every update
    with bar:
        for _ in range(3):
            bar.update(2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()            # three periodic + the final one
    assert lines[0].startswith("probe: 2/10 step (20%)") and "left" in lines[0]
    assert lines[-1].startswith("probe: 6/10 step (60%)") and "(done)" in lines[-1]


def test_lines_only_every_interval():
    out = io.StringIO()
    bar = LogProgress(1000, desc="x", unit="row", file=out, interval_s=0.2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:
        bar.update(1)
        time.sleep(0.01)
    n_periodic = len(out.getvalue().splitlines())
    assert 1 <= n_periodic <= 3                # about 0.5 s / 0.2 s, not one per update (~50)


def test_rate_is_the_average_since_the_start():
    out = io.StringIO()
    bar = LogProgress(100, desc="x", unit="row", initial=40, file=out, interval_s=1e9)
    bar.start_t -= 4.0                         # as if started 4 s ago
    bar.update(20)                             # 20 rows done now (40 were done before: resumed)
    rate = float(re.search(r"([\d.]+) row/s", bar.line()).group(1))
    assert abs(rate - 20 / 4.0) < 0.1


def test_a_terminal_gets_tqdm_and_disabled_writes_nothing():
    from tqdm.auto import tqdm

    bar = progress_bar(5, desc="x", file=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    out = io.StringIO()
    with progress_bar(5, desc="x", enabled=False, file=out) as bar:
        bar.update(5)
    assert out.getvalue() == ""
