"""Tests of the super-resolution family: EDSR, RDN, ESPCN, DBPN, GMFN and their shared blocks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.coords import Grid
from pipeline.methods import get_model, method_class, method_info
from pipeline.methods.blocks.super_resolution import (DownProjection, PixelShuffleUpsampler,
                                                      ResidualBlock, ResidualDenseBlock,
                                                      UpProjection, deconv_upsampler,
                                                      projection_kernel, strided_downsampler)

from physics_helpers import fitted_physics, random_windows

SIZE, SIGMA, WINDOW = 11, 0.5, 5
NAMES = ("edsr", "rdn", "espcn", "dbpn", "gmfn")


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("name", NAMES)
def test_family_and_label(name):
    assert method_info(name) == ("super_resolution", name.upper())
    assert method_class(name).window == 1 and method_class(name).trainable


@pytest.mark.parametrize("name", NAMES)
def test_smoke_shapes_at_c3_and_c5(name, physics):
    model = get_model(name, physics, **method_class(name).smoke_params)
    side = physics.grid.hr_size
    output = model(random_windows(3))
    assert output.hr.shape == (3, side, side)
    assert torch.isfinite(output.hr).all()


@pytest.mark.parametrize("name", NAMES)
def test_default_architecture_shapes_at_c3_and_c5(name, physics):
    model = get_model(name, physics)
    side = physics.grid.hr_size
    with torch.no_grad():
        assert model(random_windows(1)).hr.shape == (1, side, side)


@pytest.mark.parametrize("name, count", [
    ("edsr", 389_025),     # published 0.39 M
    ("rdn", 22_305_729),   # published 22.31 M
    ("espcn", 22_729),     # published 22.73 K (the table's params and FLOPs columns are swapped)
    ("dbpn", 1_963_594),   # published 1.96 M
    ("gmfn", 2_796_518),   # published 2.80 M
])
def test_default_parameter_counts(name, count, physics3):
    assert parameter_count(get_model(name, physics3)) == count


def test_edsr_img_range_only_rescales_the_biases():
    """ReLU networks are positively homogeneous: scaling the input by 255 and the output by 1/255
    equals the unscaled network with every bias divided by 255."""
    torch.manual_seed(0)
    physics = fitted_physics(3, maps=500, seed=3)  # a fresh one: .double() converts the physics in place
    scaled = get_model("edsr", physics, features=8, blocks=2).double()
    plain = get_model("edsr", physics, features=8, blocks=2, img_range=1.0).double()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        for name, parameter in plain.named_parameters():
            if name.endswith("bias"):
                parameter /= 255.0
        lr = random_windows(2).double()
        torch.testing.assert_close(scaled(lr).hr, plain(lr).hr, rtol=1e-10, atol=1e-9)


# ------------------------------------------------------------------------------------ GMFN


def test_gmfn_steps_and_loss(physics3):
    torch.manual_seed(1)
    model = get_model("gmfn", physics3, **{**method_class("gmfn").smoke_params, "steps": 3})
    output = model(random_windows(2))
    steps = output.extras["steps"]
    assert len(steps) == 3 and output.hr is steps[-1]
    assert not torch.allclose(steps[0], steps[-1]), "feedback should change the later steps"
    target = torch.rand_like(output.hr) * 250
    total, parts = model.loss(output, target)
    mses = [torch.mean((step - target) ** 2) for step in steps]
    torch.testing.assert_close(total, torch.stack(mses).mean())
    assert parts["mse"] == pytest.approx(mses[-1].item(), rel=1e-6)


def test_gmfn_faithful_uses_the_first_step_only(physics3):
    torch.manual_seed(2)
    smoke = method_class("gmfn").smoke_params
    fixed = get_model("gmfn", physics3, **smoke)
    faithful = get_model("gmfn", physics3, **smoke, faithful_first_step=True)
    faithful.load_state_dict(fixed.state_dict())
    lr = random_windows(2)
    first = fixed(lr).extras["steps"][0]
    output = faithful(lr)
    assert len(output.extras["steps"]) == 1
    torch.testing.assert_close(output.hr, first)
    target = torch.rand_like(first) * 250
    total, _ = faithful.loss(output, target)
    torch.testing.assert_close(total, torch.mean((first - target) ** 2))
    total.backward()
    feedback = [*faithful.gate.parameters(), *faithful.refine.parameters()]
    assert all(p.grad is None for p in feedback), "shipped GMFN never trains its feedback convs"


def test_gmfn_rejects_bad_reroute(physics3):
    with pytest.raises(ValueError, match="reroute"):
        get_model("gmfn", physics3, blocks=2, reroute=3)


# ------------------------------------------------------------------------------ up-samplers


@pytest.mark.parametrize("factor", [1, 3, 5, 7])
@pytest.mark.parametrize("size", [SIZE, 6])
def test_upsamplers_and_projections_sizes(factor, size):
    low = torch.randn(2, 4, size, size)
    high = torch.randn(2, 4, factor * size, factor * size)
    assert PixelShuffleUpsampler(4, 3, factor)(low).shape == (2, 3, factor * size, factor * size)
    assert deconv_upsampler(4, 3, factor)(low).shape == (2, 3, factor * size, factor * size)
    assert strided_downsampler(4, 3, factor)(high).shape == (2, 3, size, size)
    assert UpProjection(4, factor)(low).shape == high.shape
    assert DownProjection(4, factor)(high).shape == low.shape


@pytest.mark.parametrize("factor", [3, 5])
def test_deconv_centres_each_lr_pixel_on_its_middle_hr_cell(factor):
    """A centred-delta kernel sends LR pixel (i, j) to HR cell (c i + (c-1)/2, c j + (c-1)/2),
    the project's coordinate convention (pipeline.coords)."""
    kernel, _, _ = projection_kernel(factor)
    upsample = deconv_upsampler(1, 1, factor)
    with torch.no_grad():
        upsample[0].weight.zero_()
        upsample[0].weight[0, 0, kernel // 2, kernel // 2] = 1.0
        upsample[0].bias.zero_()
        low = torch.zeros(1, 1, SIZE, SIZE)
        low[0, 0, 2, 7] = 1.0
        high = upsample(low)[0, 0]
    offset = Grid(SIZE, factor).offset
    assert torch.nonzero(high).tolist() == [[factor * 2 + offset, factor * 7 + offset]]


@pytest.mark.parametrize("factor", [0, 2, 4, -3])
def test_even_or_non_positive_factor_raises(factor):
    with pytest.raises(ValueError, match="odd"):
        projection_kernel(factor)


def test_projection_kernel_is_the_shipped_one_at_c3():
    assert projection_kernel(3) == (7, 3, 2)


def test_residual_blocks_keep_shape_and_scale_the_residual():
    x = torch.randn(2, 6, SIZE, SIZE)
    assert ResidualBlock(6)(x).shape == x.shape
    torch.testing.assert_close(ResidualBlock(6, res_scale=0.0)(x), x)
    dense = ResidualDenseBlock(6, growth=4, layers=3, res_scale=0.2)
    assert dense(x).shape == x.shape
    assert [layer[0].in_channels for layer in dense.layers] == [6, 10, 14]
    assert dense.fusion.in_channels == 18 and dense.fusion.kernel_size == (1, 1)
    with pytest.raises(ValueError, match="layer"):
        ResidualDenseBlock(6, growth=4, layers=0)


def test_gmfn_bilinear_skip_is_centred(physics3):
    """The bilinear x c skip puts an LR impulse's peak on the middle HR cell of its pixel."""
    model = get_model("gmfn", physics3, **method_class("gmfn").smoke_params)
    with torch.no_grad():
        for module in model.reconstruct.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.zero_()
                module.bias.zero_()
        lr = torch.zeros(1, WINDOW, SIZE, SIZE)
        lr[0, WINDOW // 2, 4, 6] = 200.0
        hr = model(lr).hr[0]
    peak = divmod(int(hr.argmax()), physics3.grid.hr_size)
    assert peak == (3 * 4 + 1, 3 * 6 + 1)
    assert hr.max().item() == pytest.approx(200.0)

