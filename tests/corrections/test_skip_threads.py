"""Skip-Tuning never changes a shared network: tuned and plain samplers on one UNet in several threads each get
their single-threaded result, one tuned sampler serves two threads, and contexts exit in any order."""
from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings, strategies as st

from diffsolve import Sampler
from diffsolve.corrections.skip import skip_tuned
from diffsolve.corrections.skip_hooks import depth_scales
from diffsolve.models.unet import UNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    unet = UNet((8, 16), 16, blocks_per_level=1).eval().requires_grad_(False)
    for p in unet.parameters():              # zero-initialised output layers would hide the skips
        torch.nn.init.normal_(p, std=0.2)
    return unet


def _run(sampler: Sampler, seed: int) -> torch.Tensor:
    return sampler.run(steps=3, batch_size=2, seed=seed).samples


def _in_threads(jobs, rounds: int = 3) -> list[list[torch.Tensor]]:
    """Each job run `rounds` times in its own thread, all threads released together each round."""
    barrier = threading.Barrier(len(jobs))
    out: list[list] = [[] for _ in jobs]
    errors: list[BaseException] = []

    def work(i, job):
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)
                out[i].append(job(r))
        except BaseException as e:        # surfaced in the main thread below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def test_tuned_and_plain_samplers_on_one_unet_in_threads_equal_their_single_threaded_runs(net):
    samplers = [Sampler(skip_tuned(net, rho_bottom=0.5), "euler", progress=False),
                Sampler(skip_tuned(net, rho_bottom=0.8), "euler", progress=False),
                Sampler(net, "euler", progress=False)]
    reference = [[_run(s, r) for r in range(3)] for s in samplers]
    assert not torch.equal(reference[0][0], reference[2][0])
    got = _in_threads([lambda r, s=s: _run(s, r) for s in samplers])
    for want, have in zip(reference, got):
        for a, b in zip(want, have):
            assert torch.equal(a, b)
    assert net.skip_scales == [1.0, 1.0]
    assert torch.equal(_run(samplers[2], 0), reference[2][0])


def test_one_tuned_sampler_serves_two_threads(net):
    sampler = Sampler(skip_tuned(net, rho_bottom=0.6), "euler", progress=False)
    reference = [_run(sampler, r) for r in range(3)]
    for have in _in_threads([lambda r: _run(sampler, r)] * 2):
        assert all(torch.equal(a, b) for a, b in zip(reference, have))


def test_a_context_in_one_thread_leaves_calls_from_another_thread_unscaled(net):
    x, sigma = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3)), torch.tensor([0.4, 2.0])
    plain = net(x, sigma)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with skip_tuned(net, rho_bottom=0.3):
            inside.set()
            release.wait(timeout=30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(timeout=30)
        assert torch.equal(net(x, sigma), plain)
    finally:
        release.set()
        t.join()


def _elsewhere(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(rhos=st.lists(st.sampled_from([0.3, 0.5, 0.7, 0.9, 1.0]), min_size=1, max_size=4),
       order=st.randoms(use_true_random=False))
def test_contexts_exit_in_any_order_and_the_active_ones_compose(net, rhos, order):
    x, sigma = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4)), torch.tensor([0.4, 2.0])
    plain = net(x, sigma)
    alive = list(range(len(rhos)))
    exits = alive[:]
    order.shuffle(exits)            # before entering: drawing the order may end the example
    contexts = [skip_tuned(net, rho_bottom=r) for r in rhos]
    for c in contexts:
        c.__enter__()
    try:
        for i in exits:
            contexts[i].__exit__(None, None, None)
            alive.remove(i)
            if alive:
                scale = [1.0, 1.0]
                for j in alive:
                    scale = [a * b for a, b in zip(scale, depth_scales(2, 1.0, rhos[j]))]
                want = _elsewhere(lambda: net(x, sigma, skip_scale=scale))    # no context of this thread there
                torch.testing.assert_close(net(x, sigma), want, rtol=1e-6, atol=1e-6)
    finally:
        for i in alive:
            contexts[i].__exit__(None, None, None)
    assert torch.equal(net(x, sigma), plain) and net.skip_scales == [1.0, 1.0]
