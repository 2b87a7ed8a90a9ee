"""Tests of the GAN super-resolution methods (SRGAN, ESRGAN, BSRGAN), their blocks, and TDAN."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from pipeline.methods import MethodOutput, PhysicsOperator, get_model, method_class
from pipeline.methods.blocks.adversarial import (UNetDiscriminator, VGGPerceptualLoss,
                                                 VGGStyleDiscriminator, relativistic_generator_loss)
from pipeline.methods.blocks.deformable import DeformableConv, sampled_deform_conv2d
from physics_helpers import random_windows

SIZE, SIGMA = 11, 0.5
TRAIN = {"epochs": 1, "windows_per_epoch": 8, "batch": 4, "lr": 1.0e-4, "weight_decay": 0.0}
GANS = ("srgan", "esrgan", "bsrgan")
ALL = (*GANS, "tdan")


def smoke(name: str, physics: PhysicsOperator, **changes):
    return get_model(name, physics, **{**method_class(name).smoke_params, **changes})


def targets(physics: PhysicsOperator, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, c m, c m) maps with 3 targets of 220-250 each."""
    side = physics.grid.hr_size
    generator = torch.Generator().manual_seed(seed)
    maps = torch.zeros(batch, side * side)
    cells = torch.stack([torch.randperm(side * side, generator=generator)[:3] for _ in range(batch)])
    maps.scatter_(1, cells, 220 + 30 * torch.rand(batch, 3, generator=generator))
    return maps.reshape(batch, side, side)


# ----------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ALL)
def test_output_shapes_at_c3_and_c5(name, physics):
    model = smoke(name, physics)
    side = physics.grid.hr_size
    with torch.no_grad():
        output = model(random_windows(2))
    assert output.hr.shape == (2, side, side)
    assert torch.isfinite(output.hr).all()
    total, parts = model.loss(output, targets(physics, 2))
    assert torch.isfinite(total) and all(math.isfinite(v) for v in parts.values())
    if name == "tdan":
        assert output.extras["aligned"].shape == (2, 5, SIZE, SIZE)
    else:
        with torch.no_grad():
            logits = model.discriminator(output.hr.unsqueeze(1))
        assert logits.shape == ((2, 1, side, side) if name == "bsrgan" else (2, 1))


def test_discriminators_default_shapes(physics):
    side = physics.grid.hr_size
    maps = torch.rand(2, 1, side, side) * 250
    with torch.no_grad():
        assert VGGStyleDiscriminator(side, channels=4)(maps).shape == (2, 1)
        assert UNetDiscriminator(channels=4)(maps).shape == (2, 1, side, side)
    with pytest.raises(ValueError, match="side"):
        VGGStyleDiscriminator(31)


# -------------------------------------------------------------------------- parameter counts


def count(module: torch.nn.Module | list) -> int:
    parameters = module if isinstance(module, list) else list(module.parameters())
    return sum(p.numel() for p in parameters)


@pytest.mark.parametrize("name, generator, discriminator, published", [
    ("srgan", 1_552_193, 13_730_249, 35.31e6),
    ("esrgan", 16_695_681, 13_730_249, 50.45e6),
    ("bsrgan", 11_659_713, 4_375_745, 36.06e6),
])
def test_gan_parameter_counts(name, generator, discriminator, published, physics3):
    """Table VII counts generator + discriminator + the VGG19 up to conv5_4; we match all three
    to the published rounding (the evaluation table counts the generator alone)."""
    with torch.device("meta"):  # shapes only: no initialisation cost
        model = get_model(name, physics3)
    vgg = 20_024_384
    assert count(model.generator_parameters()) == generator
    assert count(model.discriminator) == discriminator
    assert count(model.perceptual) == vgg
    assert count(model) == generator + discriminator + vgg
    assert round((generator + discriminator + vgg) / 1e4) == round(published / 1e4)


def test_tdan_parameter_count(physics3):
    """584,833 (docs/methods.md §6.1 "≈0.585 M", published 0.59 M)."""
    with torch.device("meta"):
        model = get_model("tdan", physics3)
    assert count(model) == 584_833
    assert count(model.align_guided) == 50_832


# --------------------------------------------------------------------------- adversarial set-up


@pytest.mark.parametrize("name", GANS)
def test_generator_parameters_exclude_discriminator_and_vgg(name, physics3):
    model = smoke(name, physics3)
    generator = {id(p) for p in model.generator_parameters()}
    critic = {id(p) for p in model.discriminator.parameters()}
    vgg = {id(p) for p in model.perceptual.parameters()}
    assert generator and critic and vgg
    assert not generator & critic and not generator & vgg
    assert all(p.requires_grad for p in model.discriminator.parameters())
    assert not any(p.requires_grad for p in model.perceptual.parameters())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == generator | critic


@pytest.mark.parametrize("name", GANS)
def test_generator_loss_leaves_the_discriminator_alone(name, physics3):
    """The generator step backpropagates through D without D weight gradients; flags restored."""
    model = smoke(name, physics3)
    total, parts = model.loss(model(random_windows(4)), targets(physics3, 4))
    total.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is None for p in model.perceptual.parameters())
    assert all(p.grad is not None for p in model.generator_parameters())
    assert all(p.requires_grad for p in model.discriminator.parameters())
    expected = (model.pixel_weight * parts["pixel_l1"] + model.perceptual_weight * parts["perceptual"]
                + model.adversarial_weight * parts["adversarial"])
    assert total.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", GANS)
def test_discriminator_loss_finite_and_decreasing(name, physics3):
    torch.manual_seed(0)
    model = smoke(name, physics3)
    target = targets(physics3, 8)
    with torch.no_grad():
        output = model(random_windows(8))
    optimiser = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss, parts = model.discriminator_loss(output, target)
        assert torch.isfinite(loss) and parts["discriminator"] == pytest.approx(loss.item())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in model.generator_parameters())


def test_relativistic_loss_of_an_undecided_discriminator():
    """Equal logits everywhere: both BCE terms are log 2."""
    logits = torch.zeros(4, 1)
    assert relativistic_generator_loss(logits, logits).item() == pytest.approx(math.log(2))


# ----------------------------------------------------------------------------- perceptual loss


def test_perceptual_features_of_a_raw_map():
    """A 1-channel raw map is scaled by 1/255, repeated to 3 channels and ImageNet-normalised."""
    torch.manual_seed(1)
    loss = VGGPerceptualLoss(layer=2)
    maps = torch.rand(2, 1, 33, 33) * 250
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    images = (maps.repeat(1, 3, 1, 1) / 255 - mean) / std
    expected = loss.layers[2](torch.relu(loss.layers[0](images)))
    torch.testing.assert_close(loss.features(maps), expected)
    assert loss.source == "untrained VGG19"
    assert loss(maps, maps).item() == 0.0
    with pytest.raises(ValueError, match="VGG19"):
        VGGPerceptualLoss(layer=37)


def _vgg_state(layer: int = 4, seed: int = 2) -> dict:
    """A torchvision-style VGG19 state_dict (features.* plus a classifier), random values."""
    torch.manual_seed(seed)
    donor = VGGPerceptualLoss(layer=layer)
    state = {f"features.{key}": torch.randn(value.shape) for key, value in donor.layers.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(3, 3)
    return state


def test_perceptual_weights_load_into_the_truncated_network(physics3):
    """A torchvision-style VGG19 state_dict loads into the truncated network; so does one of the
    truncated layers alone; one that lacks a layer raises."""
    state = _vgg_state()
    loaded = VGGPerceptualLoss(layer=2, weights=state)
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(loaded.layers.state_dict()[key], state[f"features.{key}"])
    assert loaded.source == "pretrained VGG19 weights"
    assert not any(p.requires_grad for p in loaded.parameters())
    bare = loaded.layers.state_dict()
    torch.testing.assert_close(VGGPerceptualLoss(layer=2, weights=bare).layers[2].weight, loaded.layers[2].weight)
    model = smoke("srgan", physics3, perceptual_weights=state)
    torch.testing.assert_close(model.perceptual.layers[0].weight, state["features.0.weight"])
    assert model.perceptual_source == "pretrained VGG19 weights"
    assert smoke("esrgan", physics3).perceptual_source == "untrained VGG19"
    with pytest.raises(RuntimeError, match="Missing"):
        VGGPerceptualLoss(layer=7, weights=bare)


def test_perceptual_weights_file_is_a_declared_input_read_by_the_stage(tmp_path, physics3):
    """params.yaml names the file and its sha256; build_method reads it (the method gets tensors),
    evaluation leaves it out; a missing sha256, a changed file or a missing file is named."""
    from pipeline.config import ConfigError
    from pipeline.io import DataFileError, file_sha256
    from pipeline.method_specs import build_method, method_spec

    path = tmp_path / "vgg19.pth"
    torch.save(_vgg_state(), path)
    model = {**method_class("srgan").smoke_params, "perceptual_weights": str(path)}
    with pytest.raises(ConfigError, match="methods.srgan.model.perceptual_sha256 = None is invalid: the sha256"):
        method_spec({"srgan": {"module": "gan.py", "model": model, "train": TRAIN}}, "srgan")
    entry = {"module": "gan.py", "model": {**model, "perceptual_sha256": file_sha256(path)}, "train": TRAIN}
    spec = method_spec({"srgan": entry}, "srgan")
    built = build_method(spec, physics3)
    torch.testing.assert_close(built.perceptual.layers[0].weight, _vgg_state()["features.0.weight"])
    assert build_method(spec, physics3, weight_files=False).perceptual_source == "untrained VGG19"
    torch.save(_vgg_state(seed=3), path)  # the file changed under its declared sha256
    with pytest.raises(DataFileError, match="vgg19.pth: its sha256 is .* but params.yaml declares"):
        build_method(spec, physics3)
    path.unlink()
    with pytest.raises(DataFileError, match=r"vgg19.pth: file not found \(methods.srgan.model.perceptual_weights\)"):
        build_method(spec, physics3)


@pytest.mark.parametrize("name", ["srgan", "esrgan"])
def test_frozen_vgg_is_left_out_of_saved_weights_and_kept_when_loading(name, physics3):
    """Checkpoints and model files hold what is trained, not the frozen 20M-parameter VGG; a
    saved state_dict loads strictly into a freshly built model (its VGG as built)."""
    model = smoke(name, physics3)
    state = model.state_dict()
    assert state and not any(key.startswith("perceptual.") for key in state)
    fresh = smoke(name, physics3)
    vgg = [p.clone() for p in fresh.perceptual.parameters()]
    fresh.load_state_dict(state)  # strict
    for key, value in state.items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    for before, after in zip(vgg, fresh.perceptual.parameters()):
        assert torch.equal(before, after)


# ------------------------------------------------------------------------------------- TDAN


def test_deformable_conv_with_zero_offsets_is_a_plain_convolution():
    torch.manual_seed(3)
    x, guide = torch.randn(2, 16, 11, 11), torch.randn(2, 6, 11, 11)
    for conv, args in ((DeformableConv(16, 8, 3, deform_groups=8), (x,)),
                       (DeformableConv(16, 8, 3, deform_groups=4, guide_channels=6), (x, guide))):
        assert not conv.offset.weight.any() and not conv.offset.bias.any()
        torch.testing.assert_close(conv(*args), F.conv2d(x, conv.weight, padding=1))


def test_deformable_offsets_are_dy_dx_per_tap():
    """A constant offset (0, +1) on every tap samples one pixel to the right."""
    torch.manual_seed(4)
    conv = DeformableConv(4, 3, 3, deform_groups=1)
    with torch.no_grad():
        conv.offset.bias.copy_(torch.tensor([0.0, 1.0] * 9))
    x = torch.randn(1, 4, 7, 7)
    shifted = F.pad(x, (0, 2, 1, 1))  # zero padding moved from the left edge to the right
    torch.testing.assert_close(conv(x), F.conv2d(shifted, conv.weight))


@pytest.mark.parametrize("groups", [1, 4])
def test_sampled_deformable_conv_matches_torchvision(groups):
    """The CPU path (grid_sample of every tap) is torchvision's deform_conv2d: values and the
    gradients of input, offsets and weight, offsets reaching past the borders included."""
    from torchvision.ops import deform_conv2d

    torch.manual_seed(6)
    x = torch.randn(3, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    offsets = (1.5 * torch.randn(3, 2 * groups * 9, 9, 9, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(5, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    ours, reference = sampled_deform_conv2d(x, offsets, weight), deform_conv2d(x, offsets, weight, padding=1)
    torch.testing.assert_close(ours, reference)
    probe = torch.randn_like(reference)
    for mine, theirs in zip(torch.autograd.grad((ours * probe).sum(), (x, offsets, weight)),
                            torch.autograd.grad((reference * probe).sum(), (x, offsets, weight))):
        torch.testing.assert_close(mine, theirs)


def test_tdan_uses_every_frame_and_outputs_the_middle(physics3):
    torch.manual_seed(5)
    model = smoke("tdan", physics3)
    with torch.no_grad():
        for layer in model.modules():  # non-zero offsets, so that alignment actually deforms
            if isinstance(layer, DeformableConv):
                layer.offset.weight.normal_(0, 0.01)
        lr = random_windows(2, seed=6)
        output = model(lr)
        torch.testing.assert_close(output.extras["aligned"][:, 2], lr[:, 2])
        for frame in range(5):
            changed = lr.clone()
            changed[:, frame] = torch.rand_like(changed[:, frame]) * 255
            assert not torch.allclose(model(changed).hr, output.hr), f"frame {frame} ignored"
        wide = torch.cat([random_windows(2, seed=7)[:, :1], lr, random_windows(2, seed=8)[:, :1]], dim=1)
        torch.testing.assert_close(model(wide).hr, output.hr)
        with pytest.raises(ValueError, match="odd"):
            model(lr[:, :3])


def test_tdan_loss_and_faithful_weights(physics3):
    torch.manual_seed(9)
    model = smoke("tdan", physics3)
    faithful = smoke("tdan", physics3, faithful_loss_weights=True)
    target = targets(physics3, 2)
    slots = torch.rand(2, 5, SIZE, SIZE) * 255
    output = MethodOutput(hr=target + torch.randn_like(target), extras={"aligned": slots})
    mse = torch.mean((output.hr - target) ** 2)
    align = torch.mean((slots - slots[:, 2:3]) ** 2)
    nominal, parts = model.loss(output, target)
    torch.testing.assert_close(nominal, mse + 0.01 * align)
    torch.testing.assert_close(faithful.loss(output, target)[0], 2 * (mse + 0.01 * align))
    assert parts["align"] == pytest.approx(align.item(), rel=1e-6)


def test_flops_count_torchvision_deformable_convolution():
    """The CUDA path calls torchvision's deform_conv2d, which FlopCounterMode does not know: the
    project's formula counts it as the convolution it is (2 * out * in * k^2 per pixel)."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.ops import deform_conv2d

    from pipeline.evaluation import _custom_flops

    x, weight = torch.randn(1, 8, 9, 9), torch.randn(4, 8, 3, 3)
    offsets = torch.zeros(1, 18, 9, 9)
    with FlopCounterMode(display=False, custom_mapping=_custom_flops()) as counter:
        deform_conv2d(x, offsets, weight, padding=1)
    assert counter.get_total_flops() == 2 * 4 * 81 * 8 * 9
