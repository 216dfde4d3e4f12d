"""diffsolve.progress: plain lines outside a terminal (at start, about every 10 s, at the end; no carriage
returns; stdout flushed first), a bar inside one; Sampler.run writes no bar into a log file."""
from __future__ import annotations

import io
import sys

import pytest
from hypothesis import given, settings, strategies as st

from diffsolve import Sampler
from diffsolve.progress import Progress, progress_iter, say
from diffsolve.problems import GaussianProblem


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 7.0), min_size=1, max_size=60))
def test_a_log_gets_a_line_at_start_about_every_ten_seconds_and_at_the_end(gaps):
    clock, out = Clock(), io.StringIO()
    with Progress("reference solve", total=len(gaps), stream=out, clock=clock, heartbeat=False, grace=0) as p:
        emitted_at = [clock.now]
        for gap in gaps:
            clock.now += gap
            before = out.getvalue().count("\n")
            p.update()
            if out.getvalue().count("\n") > before:
                emitted_at.append(clock.now)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and lines[0].startswith("reference solve: 0/") and "started" in lines[0]
    assert lines[-1].startswith(f"reference solve: {len(gaps)}/{len(gaps)}") and lines[-1].endswith("done")
    # a line whenever 10 s passed since the last one, never two within 10 s; so no silent stretch over 17 s
    assert all(b - a >= 10.0 for a, b in zip(emitted_at, emitted_at[1:]))
    stamps = [1000.0] + [1000.0 + sum(gaps[:k + 1]) for k in range(len(gaps))]
    for a, b in zip(emitted_at + [stamps[-1]], emitted_at[1:] + [stamps[-1]]):
        assert b - a < 10.0 + 7.0 + 1e-9
    assert all("elapsed" in line for line in lines)


def test_lines_carry_done_total_elapsed_and_an_estimate():
    clock, out = Clock(), io.StringIO()
    p = Progress("cells", total=4, unit="cells", stream=out, clock=clock, heartbeat=False, grace=0)
    clock.now += 12
    p.update()
    p.close()
    first, second, last = out.getvalue().splitlines()
    assert first == "cells: 0/4 cells, 0s elapsed, started"
    assert second == "cells: 1/4 cells, 12s elapsed, about 36s left"
    assert last == "cells: 1/4 cells, 12s elapsed, done"


def test_a_blocking_call_still_gets_heartbeat_lines():
    import time
    out = io.StringIO()
    with Progress("reference solve", stream=out, every=0.05, grace=0.05):
        time.sleep(0.4)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("started") and lines[-1].endswith("done")
    assert sum("running" in line for line in lines) >= 2 and "\r" not in out.getvalue()


def test_stdout_is_flushed_before_a_line_so_headers_come_first(monkeypatch):
    order = []

    class Out(io.StringIO):
        def flush(self):
            order.append("stdout flushed")

    class Err(io.StringIO):
        def write(self, s):
            order.append("stderr line")
            return len(s)

    monkeypatch.setattr(sys, "stdout", Out())
    say("x", Err())
    assert order[:2] == ["stdout flushed", "stderr line"]


def test_a_terminal_gets_a_bar():
    out = Tty()
    for _ in progress_iter(range(3), "steps", stream=out, clock=Clock()):
        pass
    assert "\r" in out.getvalue() and "started" not in out.getvalue()


def test_short_sampler_runs_write_nothing_into_a_log_and_long_ones_plain_lines(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    problem = GaussianProblem.default(dim=2)
    Sampler(problem, "euler", progress=True).run(steps=5, batch_size=2, seed=0)
    assert err.getvalue() == ""
    import diffsolve.progress as progress
    clock = Clock()

    def tick():
        clock.now += 4.0
        return clock.now
    monkeypatch.setattr(progress.time, "monotonic", tick)
    Sampler(problem, "euler", progress=True).run(steps=8, batch_size=2, seed=0)
    text = err.getvalue()
    assert "\r" not in text and text.count("\n") >= 2 and "euler:" in text and "/8 steps" in text


def test_a_refusal_in_the_first_second_prints_no_progress_at_all():
    out = io.StringIO()
    with pytest.raises(ValueError):
        with Progress("sample", total=16, stream=out):
            raise ValueError("bad --seeds")
    assert out.getvalue() == ""
