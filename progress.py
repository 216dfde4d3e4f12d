"""Progress a user can follow, in a terminal and in a log file.

In a terminal (the stream is a tty) a task shows a tqdm bar. Anywhere else (CI, nohup, a notebook's captured
stderr, a log file) a bar's carriage returns turn into one unreadable line, so a task prints plain lines instead:
one when it starts, one about every `every` seconds while it runs (also while one long call blocks: a heartbeat
thread keeps the lines coming), and one when it ends, each with the stage, done/total, the time elapsed and an
estimate of the time left. Standard output is flushed before each line, so a command's headers come first.

    with Progress("reference solve", total=None) as p:     # heartbeat lines while a single call runs
        ref = solve(...)
    for batch in progress_iter(batches, "sampling", total=len(batches)):
        ...
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

from tqdm.auto import tqdm

EVERY = 10.0        # seconds between plain lines


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is an open terminal (a tty).

    Args:
        stream: Any object; one without `isatty`, or a closed stream, is not a terminal.

    Returns:
        True for an open tty.
    """
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):           # a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def say(line: str, stream: TextIO | None = None) -> None:
    """One plain line on `stream` (default stderr), after flushing stdout so that headers printed there first
    appear first.

    Args:
        line: The text, without a newline.
        stream: Where to write it; None writes to stderr.
    """
    stream = sys.stderr if stream is None else stream
    try:
        sys.stdout.flush()
    except (ValueError, OSError):
        pass
    stream.write(line + "\n")
    stream.flush()


class Progress:
    """One task's progress (see the module docstring). `total=None`: a count without an end (no estimate).
    `bar=None` chooses by the stream (a tty: a bar); `heartbeat` keeps plain lines coming while nothing calls
    update(); `clock` is the time source (tests pass a fake one). `announce=False` (short tasks, such as one
    Sampler.run): no start line, and an end line only if a line was printed while it ran. The start line waits
    `grace` seconds (a refusal in the first second prints no progress at all, only its error); the end line comes
    only after a start line.

    Args:
        stage: Name of the task, at the start of every line.
        total: Units in the task; None counts without an end (no estimate).
        unit: Name of a unit (e.g. "samples"), shown after the count.
        stream: Where lines and the bar go; None writes to stderr.
        every: Seconds between plain lines.
        clock: The time source, in seconds; None takes `time.monotonic`.
        bar: True for a tqdm bar, False for plain lines; None chooses by the stream (a tty: a bar).
        heartbeat: Keep plain lines coming from a thread while nothing calls update().
        leave: Leave the bar on screen when closed.
        enabled: False reports nothing (every method returns at once; `log` still prints).
        announce: Print a start line (after `grace`); False also prints an end line only if a line was printed.
        grace: Seconds the start line waits.
    """

    def __init__(self, stage: str, total: int | None = None, *, unit: str = "", stream: TextIO | None = None,
                 every: float = EVERY, clock: Callable[[], float] | None = None, bar: bool | None = None,
                 heartbeat: bool = True, leave: bool = True, enabled: bool = True, announce: bool = True,
                 grace: float = 1.0):
        self.stage, self.total, self.unit = stage, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.every, self.clock = float(every), clock if clock is not None else time.monotonic
        self.enabled, self.announce = enabled, announce
        self.done = 0
        self._lines = 0
        self._note = ""
        self._pending, self.grace = False, float(grace)
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = self.clock()
        self._last = self.start
        if not enabled:
            return
        if bar if bar is not None else is_terminal(self.stream):
            try:
                sys.stdout.flush()
            except (ValueError, OSError):
                pass
            self._bar = tqdm(total=total, desc=stage, unit=unit or "it", file=self.stream, leave=leave)
            return
        self._pending = announce
        if announce and grace <= 0:
            self._start()
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"progress:{stage}", daemon=True)
            self._thread.start()

    # --- reporting ---------------------------------------------------------------------------------
    def line(self, note: str = "", estimate: bool = True) -> str:
        """The current plain line: stage, done/total, time elapsed, estimate of the time left, note.

        Args:
            note: Text appended last; empty appends nothing.
            estimate: Include the estimate of the time left (when total is known and the task is under way).

        Returns:
            The line, without a newline.
        """
        elapsed = self.clock() - self.start
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}" if self.done else ""
        head = f"{self.stage}: {count}{' ' + self.unit if self.unit and count else ''}".rstrip()
        parts = [head if count else f"{self.stage}: {_duration(elapsed)} elapsed"]
        if count:
            parts.append(f"{_duration(elapsed)} elapsed")
        if estimate and self.total and 0 < self.done < self.total:
            parts.append(f"about {_duration(elapsed * (self.total - self.done) / self.done)} left")
        if note:
            parts.append(note)
        return ", ".join(parts)

    def _emit(self, note: str = "", estimate: bool = True) -> None:
        say(self.line(note, estimate), self.stream)
        self._lines += 1
        self._last = self.clock()

    def _due(self) -> bool:
        if self._pending:
            if self.clock() - self.start >= self.grace:
                self._start()
            return False
        return self.clock() - self._last >= self.every

    def _start(self) -> None:
        self._pending = False
        self._emit(f"started, {self._note}" if self._note else "started")

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            with self._lock:
                if not self._closed and self._due():
                    self._emit(f"running {self._note}" if self._note else "running")

    def note(self, text: str) -> None:
        """What the task is doing now (a bar's postfix; 'running <text>' in the plain lines).

        Args:
            text: The note.
        """
        if not self.enabled:
            return
        with self._lock:
            self._note = text
            if self._bar is not None:
                self._bar.set_postfix_str(text)

    def log(self, text: str) -> None:
        """Print a task's own log line on stdout (flushed), as its note; the next heartbeat line is due `every`
        seconds later, so heartbeats fill only the silences.

        Args:
            text: The line (printed whole; the note is cut to 80 characters).
        """
        print(text, flush=True)
        if not self.enabled:
            return
        with self._lock:
            self._note = text if len(text) <= 80 else text[:77] + "..."
            self._due()
            self._last = self.clock()
            if self._bar is not None:
                self._bar.set_postfix_str(self._note)

    def update(self, n: int = 1, message: str | None = None) -> None:
        """n more units done; `message` (a finished unit's result) becomes a line of its own outside a terminal.

        Args:
            n: Units just finished.
            message: A finished unit's result; None prints a plain line only when one is due.
        """
        if not self.enabled:
            return
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            elif message is not None:
                self._due()
                say(f"[{self.stage}] {message}  ({self.done}/{self.total} done, "
                    f"{_duration(self.clock() - self.start)} elapsed)", self.stream)
                self._lines += 1
                self._last = self.clock()
            elif self._due():
                self._emit()

    def close(self, note: str = "done") -> None:
        """Stop the heartbeat and close the bar, or print the end line (only after a start line); idempotent.

        Args:
            note: Text of the end line ("done", or what stopped the task).
        """
        if not self.enabled or self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elif self._lines:
                self._emit(note, estimate=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close("done" if kind is None else f"stopped ({kind.__name__})")


def progress_iter(items: Iterable, stage: str, total: int | None = None, **options: Any) -> Iterator:
    """Iterate `items`, reporting one unit per item (Progress options: stream, every, clock, bar, leave ...).

    Args:
        items: The items.
        stage: Name of the task.
        total: Number of items; None takes len(items) where it has one.
        **options: Keyword arguments of `Progress`.

    Yields:
        Each item, the progress updated after the caller is done with it.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(stage, total, **options) as p:
        for item in items:
            yield item
            p.update()
