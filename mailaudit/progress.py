"""Progress bars for long CLI work, on a terminal only.

One place decides: a bar is drawn on stderr when stderr is a terminal, and nothing at all is written
when it is not (pipes, log files, CI, the child processes of `mailaudit run` that log to files), so
scripts and logs never see control characters. ``MAILAUDIT_PROGRESS=0`` turns bars off on a terminal too.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Iterable, Iterator


def enabled(stream: IO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    if os.environ.get("MAILAUDIT_PROGRESS", "") in ("0", "false", "no", "off"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: float | None = None, desc: str = "", unit: str = "it", stream: IO | None = None, **kw):
    """A tqdm bar (disabled, a no-op, when the stream is not a terminal)."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled(stream), leave=False,
                dynamic_ncols=True, mininterval=0.25, **kw)


def lines_with_progress(src: IO[bytes], desc: str, stream: IO | None = None) -> Iterator[bytes]:
    """The lines of a binary file, with a bar over its bytes when its size is known (a regular file)."""
    try:
        size = os.fstat(src.fileno()).st_size or None
    except (AttributeError, OSError, ValueError):
        size = None
    if size is None or not enabled(stream):
        yield from src
        return
    with bar(size, desc, unit="B", stream=stream, unit_scale=True, unit_divisor=1024) as b:
        for line in src:
            b.update(len(line))
            yield line


def steps(items: Iterable, desc: str, total: int | None = None, stream: IO | None = None) -> Iterator:
    """``items`` with a bar that counts them, each one's name shown as it starts."""
    items = list(items) if total is None else items
    with bar(len(items) if total is None else total, desc, unit="step", stream=stream) as b:
        for item in items:
            b.set_postfix_str(str(item), refresh=True)
            yield item
            b.update(1)


class ticker:
    """``with ticker("bench ingest"):`` shows the elapsed time of work that reports no progress of its
    own, refreshed every second, on a terminal only."""

    def __init__(self, desc: str, stream: IO | None = None):
        self.desc, self.stream = desc, stream
        self._bar = None
        self._stop = None

    def __enter__(self) -> "ticker":
        import threading

        if not enabled(self.stream):
            return self
        self._bar = bar(None, self.desc, stream=self.stream, bar_format="{desc}: {elapsed}")
        self._stop = threading.Event()

        def tick():
            while not self._stop.wait(1.0):
                self._bar.refresh()
        threading.Thread(target=tick, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._stop.set()
            self._bar.close()
