"""Progress on stderr, honest about units: chunks embedded, with rate and ETA.

On a terminal one line is redrawn in place; otherwise (a CI log, a pipe) a plain line is
printed every :data:`PLAIN_EVERY_S` seconds and at the end of each phase, so a long run is
never silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

PLAIN_EVERY_S = 10.0


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Phase:
    """One phase (embedding, deep pass): call :meth:`update` often, :meth:`finish` once."""

    def __init__(self, reporter: Progress, label: str):
        self.reporter = reporter
        self.label = label
        self.started = reporter.clock()
        self.chunks = 0
        self.total: int | None = None  # chunks to do, when known
        self.files: tuple[int, int] | None = None  # (files done, files to read)
        self._last_plain = self.started

    def update(self, chunks: int | None = None, total: int | None = None,
               files: tuple[int, int] | None = None) -> None:
        if chunks is not None:
            self.chunks = chunks
        if total is not None:
            self.total = total
        if files is not None:
            self.files = files
        self.reporter.show(self)

    def elapsed(self) -> float:
        return max(1e-9, self.reporter.clock() - self.started)

    def rate(self) -> float:
        return self.chunks / self.elapsed()

    def eta(self) -> float | None:
        """Seconds left: from chunks when their total is known, else from files read."""
        elapsed = self.elapsed()
        if self.total is not None and self.chunks > 0:
            return elapsed * max(0, self.total - self.chunks) / self.chunks
        if self.files is not None and self.files[0] > 0:
            done, total = self.files
            return elapsed * max(0, total - done) / done
        return None

    def line(self) -> str:
        if self.total is not None:
            pct = 100 if self.total == 0 else min(100, 100 * self.chunks // self.total)
            parts = [f"{self.label}: {self.chunks:,}/{self.total:,} chunks ({pct}%)"]
        else:
            parts = [f"{self.label}: {self.chunks:,} chunks"]
        if self.files is not None:
            parts.append(f"{self.files[0]:,}/{self.files[1]:,} files")
        parts.append(f"{self.rate():.0f} chunks/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        return ", ".join(parts)

    def finish(self) -> float:
        """End the phase with a summary line; returns its duration in seconds."""
        seconds = self.elapsed()
        self.reporter.done(self, f"{self.label}: {self.chunks:,} chunks in {seconds:.1f}s "
                                 f"({self.rate():.0f} chunks/s)")
        return seconds


class Progress:
    """Writes phases' progress to ``stream`` (stderr); ``enabled=False`` prints nothing."""

    def __init__(self, enabled: bool = True, terminal: bool | None = None,
                 stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        if terminal is None:
            try:
                terminal = self.stream.isatty()
            except (AttributeError, ValueError):
                terminal = False
        self.terminal = terminal
        self.every_s = every_s
        self.clock = clock
        self._live = False  # a redrawn line is on screen

    def phase(self, label: str) -> Phase:
        return Phase(self, label)

    def show(self, phase: Phase) -> None:
        if not self.enabled:
            return
        if self.terminal:
            self._write("\r\x1b[2K" + phase.line(), newline=False)
            self._live = True
        elif self.clock() - phase._last_plain >= self.every_s:
            phase._last_plain = self.clock()
            self._write(phase.line())

    def note(self, message: str) -> None:
        """A line of its own (a phase starting, an interrupt)."""
        if self.enabled:
            self._clear()
            self._write(message)

    def done(self, phase: Phase, message: str) -> None:
        if self.enabled:
            self._clear()
            self._write(message)

    def _clear(self) -> None:
        if self._live:
            self._write("\r\x1b[2K", newline=False)
            self._live = False

    def _write(self, text: str, newline: bool = True) -> None:
        self.stream.write(text + ("\n" if newline else ""))
        self.stream.flush()


class CountingEncoder:
    """Wraps a model encoder and reports how many chunks each ``encode`` call embedded, so
    that progress counts chunks (the indexer's own callback counts files)."""

    def __init__(self, inner, on_encoded: Callable[[int], None] | None = None):
        self._inner = inner
        self.on_encoded = on_encoded
        self.encoded = 0

    def encode(self, texts, *args, **kwargs):
        vectors = self._inner.encode(texts, *args, **kwargs)
        self.encoded += len(texts)
        if self.on_encoded is not None:
            self.on_encoded(len(texts))
        return vectors

    def __getattr__(self, name: str):
        return getattr(self._inner, name)
