"""The peer table (diffsolve.solvers.peers) that the peer tests read and the docs' solver table shows."""
from pathlib import Path

import pytest

from diffsolve.errors import InvalidArgument
from diffsolve.solvers import available_solvers, get_solver
from diffsolve.solvers.peers import PEER_MATCHES, peer_tolerance, peers_of

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_names_a_solver_a_library_and_a_test_that_checks_that_peer():
    for m in PEER_MATCHES:
        assert m.solver in available_solvers(), m
        get_solver(m.solver, **m.options)                      # the options are the solver's own
        assert m.library in ("diffusers", "k-diffusion", "torchdiffeq"), m
        assert 0 < m.rtol <= 1e-4, m
        text = (ROOT / m.test).read_text()
        # a test either names the peer or is parametrized by its library's rows of the table
        assert m.peer in text or f'm.library == "{m.library}"' in text, f"{m.test} never checks {m.peer!r}"


def test_rows_are_unique_and_a_pair_has_one_tolerance():
    keys = [(m.solver, m.library, m.peer, tuple(sorted(m.peer_options.items()))) for m in PEER_MATCHES]
    assert len(keys) == len(set(keys))
    for m in PEER_MATCHES:
        assert {n.rtol for n in PEER_MATCHES if (n.solver, n.peer) == (m.solver, m.peer)} == {m.rtol}


def test_lookup_and_refusal():
    assert peer_tolerance("ipndm", "IPNDMScheduler") == 1e-4
    assert [m.peer for m in peers_of("dpmpp_2m")] == ["DPMSolverMultistepScheduler", "sample_dpmpp_2m"]
    assert peers_of("rk4") == ()
    with pytest.raises(InvalidArgument, match="peer='PNDMScheduler' for solver='ipndm'"):
        peer_tolerance("ipndm", "PNDMScheduler")
