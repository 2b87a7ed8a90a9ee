"""DISTA-Net (pipeline/methods/dista.py): shapes at c = 3 and 5, gradients, per-sample dynamic
convolution versus the shipped cross-sample one (docs/methods.md B2), parameter counts, loss."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.coords import Grid
from pipeline.methods import MethodOutput, PhysicsOperator, get_model
from pipeline.physics import build_phi_closed_form

from physics_helpers import fitted_physics, rendered_windows

ROOT = Path(__file__).resolve().parents[1]
SIZE, SIGMA, WINDOW = 11, 0.5, 5
SMALL = {"phases": 2, "channels": 4, "kernel_hidden": 8}
HR = Grid(SIZE, 3).hr_size  # 33: the c = 3 tests
GENERATOR = ("kernel_hidden.weight", "kernel_hidden.bias", "kernel_out.weight", "kernel_out.bias")


@pytest.fixture(scope="module")
def physics_c3() -> PhysicsOperator:
    return fitted_physics(3, maps=1000, seed=3, rounded=True)


@pytest.fixture()
def physics(physics_c3) -> PhysicsOperator:
    """A fresh c = 3 physics per test (``model.double()`` converts the physics buffers in place)."""
    return PhysicsOperator(physics_c3.phi.numpy(), physics_c3.qinit.numpy())


def gradient_norms(model, lr: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Parameter name -> |gradient| sum after one backward pass of the loss (0 when None)."""
    model.zero_grad()
    total, _ = model.loss(model(lr), target)
    total.backward()
    return {name: 0.0 if p.grad is None else p.grad.abs().sum().item()
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("c", [3, 5])
def test_output_shapes(c):
    physics = fitted_physics(c, maps=1000, seed=c, rounded=True)
    grid = physics.grid
    lr, _ = rendered_windows(physics, 3, seed=0)
    output = get_model("dista_net", physics, **SMALL)(lr)
    assert output.hr.shape == (3, grid.hr_size, grid.hr_size)
    assert torch.isfinite(output.hr).all()
    assert [sym.shape for sym in output.extras["sym"]] == [(3, 1, grid.hr_size, grid.hr_size)] * 2


def test_every_parameter_gets_a_gradient(physics):
    """Default architecture, fixed mode: the kernel generators W1/W2 train like the rest."""
    torch.manual_seed(0)
    model = get_model("dista_net", physics)
    lr, target = rendered_windows(physics, 2, seed=1)
    norms = gradient_norms(model, lr, target)
    assert len(norms) == 6 * 19
    assert [name for name, norm in norms.items() if not norm > 0] == []


def test_faithful_mode_never_trains_the_kernel_generators(physics):
    """Shipped mode (B2): exactly W1 and W2 of every phase (kernel_hidden, kernel_out) get no
    gradient, since the generated kernels are detached; every other parameter still does."""
    torch.manual_seed(0)
    model = get_model("dista_net", physics, **SMALL, faithful_dynamic_conv=True)
    lr, target = rendered_windows(physics, SMALL["channels"], seed=2)
    norms = gradient_norms(model, lr, target)
    frozen = {name for name, norm in norms.items() if norm == 0}
    assert frozen == {f"phases.{k}.{name}" for k in range(SMALL["phases"]) for name in GENERATOR}


def test_fixed_mode_samples_are_independent(physics):
    """The output of sample 0 ignores the other samples of its batch (and the batch size)."""
    torch.manual_seed(0)
    model = get_model("dista_net", physics, **SMALL).double()
    lr, _ = rendered_windows(physics, 4, seed=3, dtype=torch.float64)
    other, _ = rendered_windows(physics, 4, seed=4, dtype=torch.float64)
    changed = torch.cat([lr[:1], other[1:]])
    with torch.no_grad():
        reference = model(lr).hr[0]
        torch.testing.assert_close(model(changed).hr[0], reference)
        torch.testing.assert_close(model(lr[:1]).hr[0], reference)


def test_faithful_mode_mixes_samples(physics):
    """Shipped mode: channel k of every sample is filtered with sample k's kernel, so changing the
    other samples changes sample 0; batches other than 1 or ``channels`` cannot fuse."""
    torch.manual_seed(0)
    model = get_model("dista_net", physics, **SMALL, faithful_dynamic_conv=True).double()
    lr, _ = rendered_windows(physics, 4, seed=3, dtype=torch.float64)
    other, _ = rendered_windows(physics, 4, seed=4, dtype=torch.float64)
    with torch.no_grad():
        moved = (model(torch.cat([lr[:1], other[1:]])).hr[0] - model(lr).hr[0]).abs().max()
        assert moved > 1e-3
        assert model(lr[:1]).hr.shape == (1, HR, HR)
        with pytest.raises(ValueError, match="batch of 1 or 4"):
            model(lr[:3])


def test_dynamic_branch_is_a_per_sample_convolution(physics):
    """Fixed: d_b = sigmoid(r_b * k_b). Faithful: d_{b,j} = sigmoid(r_b * k_j), whose diagonal is
    the fixed answer."""
    torch.manual_seed(0)
    phase = get_model("dista_net", physics, **SMALL).double().phases[0]
    x = torch.randn(4, physics.grid.n_hr, dtype=torch.float64) * 50
    r = torch.randn(4, 1, HR, HR, dtype=torch.float64) * 50
    kernels = phase.kernel_out(phase.kernel_hidden(x)).reshape(4, 1, 3, 3)
    with torch.no_grad():
        fixed = phase.dynamic_branch(x, r)
        loop = torch.cat([torch.sigmoid(F.conv2d(r[b:b + 1], kernels[b:b + 1], padding=1))
                          for b in range(4)])
        torch.testing.assert_close(fixed, loop)
        phase.faithful_dynamic_conv = True
        shipped = phase.dynamic_branch(x, r)
    assert shipped.shape == (4, 4, HR, HR)
    torch.testing.assert_close(shipped[:, 1], torch.sigmoid(F.conv2d(r, kernels[1:2], padding=1))[:, 0])
    torch.testing.assert_close(torch.diagonal(shipped, dim1=0, dim2=1).permute(2, 0, 1), fixed[:, 0])


def test_parameter_counts(physics):
    """c = 3: 363,184 per phase (W1 + W2 281,353, threshold attention 6,950), 2,179,104 for six
    phases = the published 2.179 M; c = 5: W1 takes 3,025 inputs, 5,152,800 in all."""
    model = get_model("dista_net", physics)
    count = sum(p.numel() for p in model.parameters())
    assert len(model.phases) == 6 and count == 2_179_104
    for phase in model.phases:
        assert sum(p.numel() for p in phase.parameters()) == 363_184
        assert sum(p.numel() for p in phase.threshold.parameters()) == 6_950
        assert (sum(p.numel() for p in phase.kernel_hidden.parameters())
                + sum(p.numel() for p in phase.kernel_out.parameters())) == 281_353
    with open(ROOT / "reference" / "dista_net_table.csv", newline="") as handle:
        published = {row["method"]: row["params"] for row in csv.DictReader(handle)}
    assert published["DISTA-Net"] == f"{count / 1e6:.3f}M"
    physics5 = PhysicsOperator(build_phi_closed_form(SIZE, 5, SIGMA), np.zeros((3025, 121)))
    assert sum(p.numel() for p in get_model("dista_net", physics5).parameters()) == 5_152_800


def test_loss_is_mse_plus_a_hundredth_of_the_constraint(physics):
    torch.manual_seed(3)
    target = torch.rand(2, HR, HR) * 250
    output = MethodOutput(hr=target + torch.randn_like(target),
                          extras={"sym": [torch.randn(2, 1, HR, HR) * s for s in (1.0, 2.0, 3.0)]})
    mse = torch.mean((output.hr - target) ** 2)
    constraint = sum(torch.mean(s ** 2) for s in output.extras["sym"])
    total, parts = get_model("dista_net", physics, **SMALL).loss(output, target)
    torch.testing.assert_close(total, mse + 0.01 * constraint)
    assert parts["mse"] == pytest.approx(mse.item(), rel=1e-6)
    assert parts["sym"] == pytest.approx(constraint.item(), rel=1e-6)


def test_inference_skips_the_symmetry_pass(physics):
    """Under no_grad the map is the same and the residuals (a training term) are not computed."""
    torch.manual_seed(0)
    model = get_model("dista_net", physics, **SMALL)
    lr, target = rendered_windows(physics, 2, seed=5)
    trained = model(lr)
    with torch.no_grad():
        inferred = model(lr)
    torch.testing.assert_close(inferred.hr, trained.hr.detach())
    assert "sym" not in inferred.extras and len(trained.extras["sym"]) == 2
    with pytest.raises(ValueError, match="autograd"):
        model.loss(inferred, target)


def test_default_threshold_is_a_nonnegative_scale_free_fraction():
    """theta = |f| sigmoid(attn) lies in [0, |f|] (so the shrink never amplifies), while the
    shipped theta = f attn grows with f^2 and can be negative (B10)."""
    from pipeline.methods.dista import SelectiveThreshold

    torch.manual_seed(12)
    fixed, shipped = SelectiveThreshold(8), SelectiveThreshold(8, faithful=True)
    shipped.load_state_dict(fixed.state_dict())
    features = torch.randn(2, 8, 9, 9) * 100
    theta = fixed(features)
    assert torch.all(theta >= 0) and torch.all(theta <= features.abs() + 1e-4)
    raw = shipped(features)
    assert (raw < 0).any()
    scale = shipped(10 * features).abs().max() / raw.abs().max()
    assert scale > 50  # ~ 10^2: quadratic in the features


def test_large_intensities_stay_finite():
    """Frames far brighter than the training data (an ill-conditioned Q_init does the same to
    x_0) keep the default model finite; the shipped threshold overflows."""
    torch.manual_seed(13)
    physics = fitted_physics(3, maps=1000, seed=3, rounded=True)
    lr = torch.rand(2, WINDOW, SIZE, SIZE) * 255 * 3000
    with torch.no_grad():
        assert torch.isfinite(get_model("dista_net", physics)(lr).hr).all()
        assert not torch.isfinite(get_model("dista_net", physics, faithful_threshold=True)(lr).hr).all()
