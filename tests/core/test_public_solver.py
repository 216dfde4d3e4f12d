"""A new solver is one class, written with the top-level names only: subclass `Solver`, build a `Plan`, `register`
it, and the Sampler runs it by name or as an object like any built-in solver."""
import pytest
import torch

import diffsolve.solvers.base
from diffsolve import Plan, Sampler, Solver, VectorField, register


class ForwardEuler(Solver):
    """x' = x + (t' - t) v in the field's own time: a plain velocity field needs no schedule."""

    name = "forward_euler_test"
    order = 1
    needs_schedule = False

    def plan(self, field, t):
        points = self.grid_points(field, t)
        steps = tuple(float(b.t - a.t) for a, b in zip(points[:-1], points[1:]))
        return Plan(t=t, points=points, coeffs=steps, nfe=len(steps))

    def step(self, ev, x, t0, t1, state, dt):
        return x + dt * ev.velocity(x, t0), None, state


@pytest.fixture
def registered(monkeypatch):
    # A private copy of the registry: the test's solver does not join the registry other tests walk.
    monkeypatch.setattr(diffsolve.solvers.base, "_REGISTRY", dict(diffsolve.solvers.base._REGISTRY))
    register(ForwardEuler.name, ForwardEuler, "forward Euler on the velocity (test)")
    return ForwardEuler.name


def _field():
    return VectorField(lambda x, t: -x * (1.0 + t[:, None]), prediction="velocity", schedule=None)


def test_a_solver_from_public_names_runs_through_the_sampler(registered):
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_name = Sampler(_field(), registered, progress=False).run(steps=8, noise=noise)
    as_object = Sampler(_field(), ForwardEuler(), progress=False).run(steps=8, noise=noise)
    euler = Sampler(_field(), "euler", progress=False).run(steps=8, noise=noise)
    assert by_name.nfe == as_object.nfe == euler.nfe == 8
    assert by_name.solver == registered
    torch.testing.assert_close(by_name.samples, as_object.samples, rtol=0, atol=0)
    torch.testing.assert_close(by_name.samples, euler.samples, rtol=1e-14, atol=1e-14)
