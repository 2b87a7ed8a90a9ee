"""Tests of the learned-ISTA family (LISTA, LIHT, LAMP, TiLISTA) and the BID baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.methods import MethodOutput, PhysicsOperator, get_model, method_class, method_info
from pipeline.methods.bid import convolution_matrix, gaussian_profile
from pipeline.methods.blocks import soft_threshold
from pipeline.methods.blocks.thresholds import hard_threshold, lipschitz_constant, support_selection_shrink

from physics_helpers import fitted_physics, rendered_windows

SIZE, SIGMA, WINDOW = 11, 0.5, 5
LEARNED = ["lista", "liht", "lamp", "tilista"]


@pytest.fixture(scope="module")
def physics() -> PhysicsOperator:
    return fitted_physics(3)


@pytest.fixture(scope="module")
def physics5() -> PhysicsOperator:
    return fitted_physics(5)


def float64_model(name: str, physics: PhysicsOperator, **params) -> torch.nn.Module:
    """A float64 instance on its own copy of the physics (``.double()`` converts modules in place)."""
    own = PhysicsOperator(physics.phi.numpy(), physics.qinit.numpy())
    return get_model(name, own, **params).double()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", LEARNED + ["bid"])
@pytest.mark.parametrize("c", [3, 5])
def test_output_shapes(name, c, physics, physics5):
    ops = physics if c == 3 else physics5
    lr, target = rendered_windows(ops, 3)
    model = get_model(name, ops, **method_class(name).smoke_params)
    output = model(lr)
    assert output.hr.shape == (3, 11 * c, 11 * c) == target.shape
    assert torch.isfinite(output.hr).all()
    if model.trainable:
        total, _ = model.loss(output, target)
        total.backward()
        assert all(p.grad is not None for p in model.parameters())


def test_registry_entries():
    for name, label in zip(LEARNED + ["bid"], ["LISTA", "LIHT", "LAMP", "TiLISTA", "BID"]):
        family = "traditional" if name == "bid" else "deep_unfolding"
        assert method_info(name) == (family, label)
        assert method_class(name).trainable == (name != "bid")
        assert method_class(name).window == 1


# ---------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name, count", [
    ("lista", 16 * (1089 ** 2 + 1089 * 121 + 1089)),  # 21,100,464 (published 21.10 M)
    ("liht", 16 * (1089 ** 2 + 1089 * 121)),          # 21,083,040: thresholds are fixed buffers
    ("lamp", 16 * (1089 * 121 + 1089)),               # 2,125,728 (published 2.13 M)
    ("tilista", 16 * (1089 * 121 + 1089 + 1)),        # 2,125,744 (published 2.22 M, B25)
    ("bid", 0),
])
def test_parameter_counts(name, count, physics):
    assert n_params(get_model(name, physics)) == count


def test_layers_are_independent_copies(physics):
    """Every layer owns its matrices (no aliasing, B26)."""
    model = get_model("lista", physics, layers=3)
    before = model.recurrence[1].detach().clone()
    with torch.no_grad():
        model.recurrence[0].add_(1.0)
        model.back_projection[0].add_(1.0)
    torch.testing.assert_close(model.recurrence[1], before)
    assert not torch.equal(model.back_projection[0], model.back_projection[1])


# ------------------------------------------------------------------------------ initialisation


def test_lista_starts_as_the_preconditioned_gradient_iteration(physics):
    """With lam = 0 the untrained LISTA is K steps of x <- x + Q (y - Phi x) from x_0 = Q y."""
    lr, _ = rendered_windows(physics, 4)
    model = float64_model("lista", physics, layers=3, lam=0.0)
    ops = model.physics
    y = lr[:, WINDOW // 2].reshape(4, -1).double()
    x = ops.initial(y)
    for _ in range(3):
        x = x + ops.initial(y - ops.A(x))
    with torch.no_grad():
        # W_k = I - Q Phi is stored in float32
        torch.testing.assert_close(model(lr.double()).hr.reshape(4, -1), x, rtol=1e-6, atol=1e-4)
    phi_norm = lipschitz_constant(physics.phi)
    default = get_model("lista", physics, layers=1)
    assert default.threshold.detach().unique().item() == pytest.approx(0.4 / (1.001 * phi_norm))


def test_init_from_phi(physics):
    """init_from="phi": B_k = Phi^T / L and W_k = I - Phi^T Phi / L (the textbook LISTA start)."""
    lipschitz = lipschitz_constant(physics.phi)
    phi = physics.phi.double()
    for name in ("lista", "liht"):
        model = get_model(name, physics, layers=2, init_from="phi")
        torch.testing.assert_close(model.back_projection[1], physics.phi.T / lipschitz)
        expected = torch.eye(33 * 33, dtype=torch.float64) - phi.T @ phi / lipschitz
        torch.testing.assert_close(model.recurrence[1].double(), expected, rtol=0, atol=1e-6)
    tilista = get_model("tilista", physics, layers=2, init_from="phi")
    torch.testing.assert_close(tilista.back_projection[0], physics.phi.T / lipschitz)
    torch.testing.assert_close(get_model("lamp", physics, layers=1).back_projection[0], physics.phi.T / lipschitz)
    with pytest.raises(ValueError, match="init_from"):
        get_model("lista", physics, layers=1, init_from="identity")


def test_liht_init_and_faithful_identity(physics):
    lr, _ = rendered_windows(physics, 4)
    with torch.no_grad():
        liht = get_model("liht", physics, layers=3, threshold=0.0)
        lista = get_model("lista", physics, layers=3, lam=0.0)
        torch.testing.assert_close(liht(lr).hr, lista(lr).hr)
        faithful = get_model("liht", physics, layers=3, threshold=0.0, faithful_identity_init=True)
        y = lr[:, WINDOW // 2].reshape(4, -1)
        expected = 4 * physics.initial(y)  # (K + 1) Q y
        torch.testing.assert_close(faithful(lr).hr.reshape(4, -1), expected, rtol=1e-5, atol=1e-3)
    model = get_model("liht", physics, layers=2)
    assert "threshold" in dict(model.named_buffers())
    assert "threshold" not in dict(model.named_parameters())
    assert torch.all(model.threshold == math.sqrt(0.4))


def test_lamp_first_layer(physics):
    """Layer 1: v = y - Phi Q y (b v_0 = 0), x = soft(Q y + Phi^T v / L, ||v|| lambda / m)."""
    lr, _ = rendered_windows(physics, 4)
    model = float64_model("lamp", physics, layers=1)
    ops = model.physics
    y = lr[:, WINDOW // 2].reshape(4, -1).double()
    x0 = ops.initial(y)
    v = y - ops.A(x0)
    sigma = torch.sqrt(torch.mean(v ** 2, dim=1, keepdim=True))
    expected = soft_threshold(x0 + ops.A_adjoint(v) / lipschitz_constant(physics.phi), 0.4 * sigma)
    with torch.no_grad():
        torch.testing.assert_close(model(lr.double()).hr.reshape(4, -1), expected)


def test_lamp_onsager_term(physics):
    """Layer 2 uses v_2 = y - Phi x_1 + b v_1 with b = ||x_1||_0 / m^2."""
    lr, _ = rendered_windows(physics, 4)
    model = float64_model("lamp", physics, layers=2)
    ops = model.physics
    y = lr[:, WINDOW // 2].reshape(4, -1).double()
    x, v = ops.initial(y), torch.zeros_like(y)
    back_projection = ops.phi.T / lipschitz_constant(physics.phi)
    for _ in range(2):
        b = (x != 0).sum(dim=1, keepdim=True).double() / y.shape[1]
        v = y - ops.A(x) + b * v
        sigma = torch.sqrt(torch.mean(v ** 2, dim=1, keepdim=True))
        x = soft_threshold(x + v @ back_projection.T, 0.4 * sigma)
    assert torch.all(b > 0)
    with torch.no_grad():
        torch.testing.assert_close(model(lr.double()).hr.reshape(4, -1), x)


def test_tilista_support_schedule_and_step(physics):
    model = get_model("tilista", physics)
    assert model.support_percent[:3] == pytest.approx([1.2, 2.4, 3.6])
    assert model.support_percent[10:] == [13.0] * 6
    assert torch.all(model.step == 1.0)
    torch.testing.assert_close(model.back_projection[5], physics.qinit)


# ------------------------------------------------------------------------------ shrinkage blocks


def test_hard_threshold_passes_no_gradient_to_theta():
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    theta = torch.tensor(1.0, requires_grad=True)
    out = hard_threshold(x, theta)
    torch.testing.assert_close(out, torch.tensor([-2.0, 0.0, 0.0, 2.0]))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert theta.grad is None or theta.grad == 0


def test_support_selection_keeps_the_largest_entries():
    z = torch.arange(1.0, 101.0).unsqueeze(0)  # one row, magnitudes 1..100
    out = support_selection_shrink(z, torch.full((100,), 5.0), percent=3.0)
    torch.testing.assert_close(out[0, 97:], z[0, 97:])            # top 3 % unshrunk
    torch.testing.assert_close(out[0, :97], soft_threshold(z[0, :97], 5.0))
    # a high threshold overrides the selection: nothing passes unshrunk
    out = support_selection_shrink(z, torch.full((100,), 200.0), percent=3.0)
    assert torch.all(out == 0)


# ----------------------------------------------------------------------------------- variants


def test_variants_differ(physics):
    lr, _ = rendered_windows(physics, 4)
    with torch.no_grad():
        outputs = {name: get_model(name, physics, layers=4)(lr).hr for name in LEARNED}
    for a in LEARNED:
        for b in LEARNED:
            if a < b:
                assert not torch.allclose(outputs[a], outputs[b]), (a, b)
    kinds = {name: {key.split(".")[0] for key, _ in get_model(name, physics, layers=2).named_parameters()}
             for name in LEARNED}
    assert kinds == {"lista": {"back_projection", "recurrence", "threshold"},
                     "liht": {"back_projection", "recurrence"},
                     "lamp": {"back_projection", "threshold"},
                     "tilista": {"back_projection", "threshold", "step"}}


@pytest.mark.parametrize("name", LEARNED)
def test_faithful_broadcast_loss(name, physics):
    """Default: MSE per frame against its own map. Faithful (B3): every output against every map."""
    torch.manual_seed(0)
    target = torch.rand(3, 33, 33) * 250
    output = MethodOutput(hr=target + torch.randn_like(target))
    fixed, parts = get_model(name, physics, layers=1).loss(output, target)
    faithful, faithful_parts = get_model(name, physics, layers=1, faithful_broadcast_loss=True).loss(
        output, target)
    torch.testing.assert_close(fixed, torch.mean((output.hr - target) ** 2))
    pairs = torch.stack([torch.mean((output.hr[i] - target[j]) ** 2) for i in range(3) for j in range(3)])
    torch.testing.assert_close(faithful, pairs.mean())
    assert faithful > 10 * fixed
    assert faithful_parts["mse"] == pytest.approx(parts["mse"])
    single = MethodOutput(hr=output.hr[:1])
    torch.testing.assert_close(get_model(name, physics, layers=1, faithful_broadcast_loss=True).loss(
        single, target[:1])[0], torch.mean((output.hr[:1] - target[:1]) ** 2))


# ------------------------------------------------------------------------------------------ BID


def test_bid_blur_matrix_is_the_same_convolution():
    profile = gaussian_profile(3, 0.5, faithful_grid=True)  # asymmetric: tests the orientation
    x = torch.rand(2, 33, 33, dtype=torch.float64)
    blur = convolution_matrix(profile, 33)
    kernel = torch.outer(profile, profile).flip(0, 1)[None, None]  # conv2d correlates
    torch.testing.assert_close(blur @ x @ blur.T, F.conv2d(x[:, None], kernel, padding=1)[:, 0])
    torch.testing.assert_close(gaussian_profile(3, 0.5), gaussian_profile(3, 0.5).flip(0))
    assert profile.argmax() == 1 and profile[0] < profile[2]  # samples at -2, -0.5, 1


def test_bid_recovers_separated_targets(physics):
    truth = [(10, 10, 240.0), (22, 25, 230.0)]  # HR cells (row, col), far apart
    hr = torch.zeros(1, 33 * 33)
    for row, col, brightness in truth:
        hr[0, row * 33 + col] = brightness
    lr = physics.A(hr).reshape(1, 1, SIZE, SIZE).repeat(1, WINDOW, 1, 1)
    model = get_model("bid", physics)
    assert not model.trainable and not list(model.parameters())
    estimate = model(lr).hr[0].numpy()
    detections = np.argwhere(estimate >= 70)
    for row, col, _ in truth:
        near = np.abs(detections - (row, col)).max(axis=1) <= 1
        assert near.any()
        local = estimate[row - 1:row + 2, col - 1:col + 2]
        assert local.argmax() == 4  # the local maximum sits on the true cell
    for cell in detections:  # and nothing is detected away from the targets
        assert min(np.abs(cell - (row, col)).max() for row, col, _ in truth) <= 1


def test_bid_batched_equals_one_by_one_and_stops(physics):
    lr, _ = rendered_windows(physics, 4)
    lr = lr.double()
    lr[0] = 0.0  # a blank frame converges at once
    model = float64_model("bid", physics, iterations=300)
    batched = model(lr)
    steps = batched.extras["iterations"]
    assert steps[0] == 1 and torch.all(steps[1:] == 300)
    for index in range(4):
        single = model(lr[index:index + 1])
        torch.testing.assert_close(batched.hr[index], single.hr[0])
        assert single.extras["iterations"].item() == steps[index].item()


def test_bid_faithful_column_input(physics):
    """Shipped: cv2.resize of the 121x1 column to 11x11 reads pixel (i, 5) for every output (i, j)."""
    lr, _ = rendered_windows(physics, 2)
    middle = lr[:, :, :, SIZE // 2:SIZE // 2 + 1].expand(-1, -1, -1, SIZE)
    faithful = get_model("bid", physics, iterations=5, faithful_column_input=True)
    fixed = get_model("bid", physics, iterations=5)
    torch.testing.assert_close(faithful(lr).hr, fixed(middle.contiguous()).hr)
    assert not torch.allclose(faithful(lr).hr, fixed(lr).hr)
