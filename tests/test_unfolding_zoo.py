"""Tests of the deep-unfolding zoo, part 2: FISTA-Net, ISTA-Net++, USRNet, RPCANet."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.coords import Grid
from pipeline.methods import MethodOutput, PhysicsOperator, get_model
from pipeline.methods.blocks.unfolding import LeastSquaresData
from pipeline.methods.fistanet import FISTANetBlock
from pipeline.physics import render_batch
from pipeline.sensor import Sensor

from physics_helpers import fitted_physics, random_windows

SIZE, SIGMA = 11, 0.5
NAMES = ["fista_net", "ista_net_pp", "usrnet", "rpcanet"]


@pytest.fixture(scope="module")
def physics() -> PhysicsOperator:
    return fitted_physics(3, maps=500, seed=3)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("c", [3, 5])
@pytest.mark.parametrize("name", NAMES)
def test_default_architecture_shapes(name, c):
    model = get_model(name, fitted_physics(c, maps=500, seed=c))
    with torch.no_grad():
        output = model(random_windows(2, scale=120.0))
    assert output.hr.shape == (2, c * SIZE, c * SIZE)
    assert torch.isfinite(output.hr).all()


@pytest.mark.parametrize("name, expected", [("fista_net", 37_607), ("ista_net_pp", 760_220),
                                            ("usrnet", 1_068_736), ("rpcanet", 679_896)])
def test_default_parameter_counts(name, expected, physics):
    assert count(get_model(name, physics)) == expected


def test_fista_net_count_is_published_minus_unused_convs(physics):
    """Published 74,599 = ours + the shipped conv2/conv3 pairs (4 x (32*32*9 + 32)) never used."""
    model = get_model("fista_net", physics)
    assert count(model) + 4 * (32 * 32 * 9 + 32) == 74_599
    assert count(model.block) == 37_601


def test_fista_net_momentum_and_weight_tying(physics):
    model = get_model("fista_net", physics)
    output = model(random_windows(2, scale=120.0))
    assert len(output.extras["sym"]) == len(output.extras["sparse"]) == 7
    assert (output.hr >= 0).all()  # ReLU output
    assert sum(isinstance(module, FISTANetBlock) for module in model.modules()) == 1  # tied


def test_fista_net_faithful_loss_weights(physics):
    torch.manual_seed(0)
    target = torch.rand(2, 33, 33) * 250
    sym = [torch.randn(2, 4, 33, 33) * s for s in (1.0, 2.0)]
    sparse = [torch.randn(2, 4, 33, 33) * s for s in (3.0, 4.0)]
    output = MethodOutput(hr=target + torch.randn_like(target),
                          extras={"sym": sym, "sparse": sparse})
    mse = torch.mean((output.hr - target) ** 2)
    l1 = torch.mean(torch.abs(output.hr - target))
    sym_sum = sum(torch.mean(s ** 2) for s in sym)
    sparse_sum = sum(torch.mean(torch.abs(s)) for s in sparse)
    nominal, parts = get_model("fista_net", physics).loss(output, target)
    faithful, _ = get_model("fista_net", physics, faithful_loss_weights=True).loss(output, target)
    torch.testing.assert_close(nominal, mse + 0.1 * l1 + 0.01 * sym_sum + 0.001 * sparse_sum)
    torch.testing.assert_close(faithful, 2 * (mse + 0.1 * l1) + 1.01 * sym_sum + 0.001 * sparse_sum)
    assert parts["sparsity"] == pytest.approx(sparse_sum.item(), rel=1e-6)


def test_ista_net_pp_condition_is_the_sensor_psf(physics):
    """The condition network reads the sensor's PSF std: another sensor, other step sizes."""
    torch.manual_seed(0)
    model = get_model("ista_net_pp", physics, phases=2, channels=4)
    lr = random_windows(2, scale=120.0)
    with torch.no_grad():
        before = model(lr).hr
        model.physics = physics.with_sensor(Sensor(psf_sigma=0.7))
        after = model(lr).hr
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("c, sigma", [(3, 0.5), (5, 0.7)])
def test_usrnet_degradation_is_the_sensor_psf(c, sigma):
    """USRNet's data term blurs with the sensor's pixel-integrated Gaussian at the grid's ratio:
    a unit target at an HR cell centre degrades to the frame the simulator renders for it."""
    physics = fitted_physics(c, maps=500, seed=c, sigma=sigma, sensor=Sensor(psf_sigma=sigma))
    grid = Grid(SIZE, c)
    row, col = 4 * c + 1, 6 * c + c - 1  # an off-centre sub-pixel cell
    hr = torch.zeros(1, grid.n_hr, dtype=torch.float64)
    hr[0, row * grid.hr_size + col] = 1.0
    x, y = grid.to_lr_coordinate(np.array([row, col]))
    frame = render_batch(np.array([[x]]), np.array([[y]]), np.ones((1, 1)), SIZE,
                         physics.sensor.psf_sigma)
    degraded = get_model("usrnet", physics).to(torch.float64).physics.A(hr)
    np.testing.assert_allclose(degraded.numpy().reshape(frame.shape), frame, atol=1e-6)


def test_usrnet_data_step_is_the_exact_minimiser(physics):
    """(Phi^T Phi + alpha I) x = Phi^T y + alpha z for the proximal step (float64)."""
    ops = PhysicsOperator(physics.phi.double().numpy(), physics.qinit.double().numpy()).double()
    generator = torch.Generator().manual_seed(1)
    y = torch.rand(3, ops.grid.n_lr, generator=generator, dtype=torch.float64) * 120
    z = torch.rand(3, ops.grid.n_hr, generator=generator, dtype=torch.float64) * 50
    alpha = torch.tensor(0.3, dtype=torch.float64)
    x = LeastSquaresData(ops, y).proximal_step(z, alpha)
    lhs = x @ ops.gram() + alpha * x
    torch.testing.assert_close(lhs, ops.A_adjoint(y) + alpha * z, rtol=1e-9, atol=1e-8)


def test_usrnet_hyperparameters_read_sensor_noise_and_ratio(physics):
    """HyPaNet's input is (sensor read noise / 255, c): a noisier sensor, other weights."""
    torch.manual_seed(0)
    model = get_model("usrnet", physics, iterations=2, channels=(4, 4, 8, 8), blocks=1, hidden=8)
    lr = random_windows(2, scale=120.0)
    with torch.no_grad():
        quiet = model(lr).hr
        model.physics = physics.with_sensor(physics.sensor.with_noise(5.0))
        noisy = model(lr).hr
    assert not torch.allclose(quiet, noisy)


def test_rpcanet_faithful_fixed_input(physics):
    """Shipped: every stage sees D_0; fixed: stage k sees stage k-1's merged D."""
    torch.manual_seed(0)
    small = {"stages": 3, "channels": 4, "sparse_layers": 1, "lowrank_layers": 1, "merge_layers": 1}
    fixed = get_model("rpcanet", physics, **small).eval()
    faithful = get_model("rpcanet", physics, faithful_fixed_input=True, **small).eval()
    faithful.load_state_dict(fixed.state_dict())
    lr = random_windows(2, scale=120.0)
    with torch.no_grad():
        observation = fixed(lr).extras["observation"].unsqueeze(1)
        d, t = observation, torch.zeros_like(observation)
        for stage in fixed.stages:
            d, t = stage(observation, t)
        torch.testing.assert_close(faithful(lr).hr, t.squeeze(1))
        assert not torch.allclose(fixed(lr).hr, faithful(lr).hr)


def test_rpcanet_loss_weights(physics):
    torch.manual_seed(1)
    target = torch.rand(2, 33, 33) * 250
    observation = torch.rand(2, 33, 33) * 100
    output = MethodOutput(hr=target + torch.randn_like(target),
                          extras={"observation": observation,
                                  "reconstruction": observation + torch.randn_like(observation)})
    mse_t = torch.mean((output.hr - target) ** 2)
    mse_d = torch.mean((output.extras["reconstruction"] - observation) ** 2)
    nominal, _ = get_model("rpcanet", physics).loss(output, target)
    faithful, _ = get_model("rpcanet", physics, faithful_loss_weights=True).loss(output, target)
    torch.testing.assert_close(nominal, 0.9 * mse_t + 0.09 * mse_d)
    torch.testing.assert_close(faithful, 1.8 * mse_t + 0.99 * mse_d)
