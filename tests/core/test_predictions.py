"""Every parameterization converts to the data prediction and back, on every schedule (float64, tight tolerance)."""
import pytest
import torch

from diffsolve import EDMSchedule, RectifiedFlow, VESchedule, VPContinuous, VPDiscrete, VectorField
from diffsolve.predictions import PREDICTIONS, PathPoint, from_x0, to_x0

SCHEDULES = {
    "vp_linear": VPDiscrete.linear(),
    "vp_cosine": VPDiscrete.cosine(),
    "vp_continuous": VPContinuous(),
    "ve": VESchedule(),
    "edm": EDMSchedule(),
    "rectified_flow": RectifiedFlow(),
}
TIMES = [0.05, 0.3, 0.7, 0.95]


def _point(sch, t):
    tt = torch.tensor(t, dtype=torch.float64)
    return PathPoint(float(sch.alpha(tt)), float(sch.sigma(tt)), float(sch.d_alpha(tt)), float(sch.d_sigma(tt)))


def _time(sch, u):
    return sch.t_min + u * (sch.t_max - sch.t_min)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ground_truth_outputs_recover_x0(schedule, prediction):
    """Build x_t from known x0 and eps, form what a perfect network of each kind outputs, convert back."""
    sch = SCHEDULES[schedule]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=g, dtype=torch.float64)
    for u in TIMES:
        p = _point(sch, _time(sch, u))
        x = p.alpha * x0 + p.sigma * eps
        truth = {"eps": eps, "x0": x0, "denoiser": x0, "v": p.alpha * eps - p.sigma * x0,
                 "score": -eps / p.sigma, "velocity": p.d_alpha * x0 + p.d_sigma * eps}[prediction]
        torch.testing.assert_close(to_x0(prediction, truth, x, p), x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(from_x0(prediction, x0, x, p), truth, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "velocity"])
def test_vector_field_round_trip(schedule, prediction):
    """A network that answers in `prediction` form from an exact x0 gives that x0 back through VectorField.denoise."""
    sch = SCHEDULES[schedule]
    x0_true = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)

    def net(x, t_model):
        t = sch.t_from_model_time(t_model[0].double())
        return from_x0(prediction, x0_true, x, _point(sch, float(t)))

    field = VectorField(net, prediction, sch)
    for u in TIMES:
        p = field.at(_time(sch, u))
        x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(field.denoise(x, p), x0_true, rtol=1e-9, atol=1e-9)


def test_flow_time_convention_flips_time_and_sign():
    sch = RectifiedFlow()
    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    seen = []

    def flow_net(x, t_flow):       # t_flow = 0 at noise: velocity towards data is x0 - eps
        seen.append(float(t_flow[0]))
        t = 1 - float(t_flow[0])
        eps = (x - (1 - t) * x0) / t
        return x0 - eps

    field = VectorField(flow_net, "velocity", sch, time_convention="flow")
    p = field.at(0.25)
    x = 0.75 * x0 + 0.25 * torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(field.denoise(x, p), x0)
    assert seen[-1] == pytest.approx(0.75)
