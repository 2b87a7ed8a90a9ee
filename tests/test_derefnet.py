"""DeRefNet (pipeline/methods/derefnet.py) and its alignment blocks (blocks/alignment.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.coords import Grid
from pipeline.methods import MethodOutput, PhysicsOperator, get_model, method_class
from pipeline.methods.blocks.alignment import (FlowAlignment, SelectiveAttention, TemporalGate,
                                               frame_index_encoding, warp)
from pipeline.methods.derefnet import SHIPPED_WINDOWS_PER_BATCH
from pipeline.physics import build_phi_closed_form
from physics_helpers import random_target_maps, random_windows

SIZE, SIGMA, WINDOW = 11, 0.5, 5
SMOKE = method_class("derefnet").smoke_params


def make_physics(c: int) -> PhysicsOperator:
    """Phi for ratio c plus a Q_init fitted (float64) on 600 sparse maps and their 8-bit frames
    (rounded and saturated, as the pipeline's frames are: Phi Q is then not the identity)."""
    phi = build_phi_closed_form(SIZE, c, SIGMA)
    grid = Grid(SIZE, c)
    rng = np.random.default_rng(c)
    maps = np.zeros((600, grid.n_hr))
    for row in maps:
        k = rng.integers(2, 5)
        row[rng.choice(grid.n_hr, size=k, replace=False)] = rng.uniform(220.0, 250.0, size=k)
    frames = np.clip(np.round(maps @ phi.T), 0, 255)
    return PhysicsOperator(phi, np.linalg.solve(frames.T @ frames, frames.T @ maps).T)


@pytest.fixture(scope="module")
def physics() -> PhysicsOperator:
    return make_physics(3)


def _windows_and_targets(physics: PhysicsOperator, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return random_windows(batch, seed), random_target_maps(physics, batch, seed)


# ------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("c", [3, 5])
def test_default_architecture_output_shapes(c):
    physics = make_physics(c)
    torch.manual_seed(0)
    model = get_model("derefnet", physics)
    lr, _ = _windows_and_targets(physics, 2)
    output = model(lr)
    side = physics.grid.hr_size
    assert output.hr.shape == (2, side, side) and torch.isfinite(output.hr).all()
    assert output.extras["aligned"].shape == (2, WINDOW - 1, side, side)
    assert output.extras["reference"].shape == (2, side, side)
    assert len(output.extras["sym"]) == 9
    assert all(sym.shape == (2 * WINDOW, 1, side, side) for sym in output.extras["sym"])
    with torch.no_grad():
        assert model(lr).extras["sym"] == []  # a training term: skipped at inference


def test_class_attributes():
    cls = method_class("derefnet")
    assert (cls.family, cls.label, cls.window, cls.trainable) == ("multi_frame", "DeRefNet", 5, True)


# ----------------------------------------------------------------------- multi-frame behaviour


def test_windows_are_independent_and_neighbours_matter(physics):
    torch.manual_seed(1)
    model = get_model("derefnet", physics, **SMOKE)
    lr, _ = _windows_and_targets(physics, 3)
    with torch.no_grad():
        batched = model(lr).hr
        for index in range(3):
            torch.testing.assert_close(model(lr[index:index + 1]).hr[0], batched[index],
                                       rtol=1e-4, atol=1e-4)
        changed = lr.clone()
        changed[:, 0] = changed[:, 0].flip(-1)
        assert not torch.allclose(model(changed).hr, batched)


def test_longer_windows_use_the_middle_five_frames(physics):
    torch.manual_seed(2)
    model = get_model("derefnet", physics, **SMOKE)
    lr, _ = _windows_and_targets(physics, 2)
    padded = torch.cat([torch.zeros(2, 1, SIZE, SIZE), lr, torch.zeros(2, 1, SIZE, SIZE)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded).hr, model(lr).hr)
        with pytest.raises(ValueError, match="odd"):
            model(lr[:, :3])
        with pytest.raises(ValueError, match="odd"):
            model(lr[:, :4])


# ------------------------------------------------------------------------------- gradients


def test_every_parameter_receives_a_gradient(physics):
    """Default config. At initialisation the zero offset (and flow) convolutions block the
    gradient of what lies upstream of them only (selective attention, the centre embedding); one
    Adam step later every parameter has a non-zero gradient."""
    torch.manual_seed(3)
    model = get_model("derefnet", physics)
    lr, target = _windows_and_targets(physics, 2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(model(lr), target)[0].backward()
    first = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert all(torch.isfinite(grad).all() for grad in first.values())
    blocked = {name for name, grad in first.items() if not grad.abs().sum() > 0}
    assert blocked == {name for name, _ in model.named_parameters()
                       if name.startswith("alignment.attention.")}
    optimiser.step()
    optimiser.zero_grad()
    model.loss(model(lr), target)[0].backward()
    silent = [name for name, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient: {silent}"


# --------------------------------------------------------------------------------- ablations


@pytest.mark.parametrize("switch", [
    {"feature_extractor": "residual"},
    {"alignment": "none"},
    {"alignment": "optical_flow"},
    {"alignment": "deformable"},
    {"alignment": "dynamic_deformable"},
    {"time_encoder": False},
])
def test_ablation_switches_train_one_step(physics, switch):
    torch.manual_seed(4)
    model = get_model("derefnet", physics, **SMOKE, **switch)
    lr, target = _windows_and_targets(physics, 4)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    output = model(lr)
    assert output.hr.shape == target.shape
    total, parts = model.loss(output, target)
    optimiser.zero_grad()
    total.backward()
    optimiser.step()
    assert torch.isfinite(total) and set(parts) == {"mse", "constraint", "alignment"}
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
    if switch.get("alignment") == "none":
        assert output.extras["aligned"] is None and parts["alignment"] == 0.0
    if switch.get("feature_extractor") == "residual":
        assert output.extras["sym"] == [] and parts["constraint"] == 0.0
    if switch.get("time_encoder") is False:
        assert model.time_gate is None


@pytest.mark.parametrize("param, value, allowed", [
    ("feature_extractor", "resnet", "unfolding, residual"),
    ("alignment", "flow", "none, optical_flow, deformable, dynamic_deformable"),
    ("time_encoder", "yes", "True or False"),
])
def test_invalid_switches_name_the_parameter(physics, param, value, allowed):
    with pytest.raises(ValueError, match=f"{param} must be .*{allowed}"):
        get_model("derefnet", physics, **SMOKE, **{param: value})


@pytest.mark.parametrize("param", ["regression_weight", "constraint_weight", "alignment_weight"])
def test_invalid_loss_weights(physics, param):
    with pytest.raises(ValueError, match=param):
        get_model("derefnet", physics, **SMOKE, **{param: -0.1})


# ------------------------------------------------------------------------------------- loss


def fake_output(side: int) -> tuple[MethodOutput, torch.Tensor]:
    torch.manual_seed(5)
    target = torch.rand(2, side, side) * 250
    output = MethodOutput(hr=target + torch.randn_like(target), extras={
        "sym": [torch.randn(10, 1, side, side) * s for s in (1.0, 2.0)],
        "aligned": torch.randn(2, 4, side, side) * 3,
        "reference": torch.randn(2, side, side)})
    return output, target


def test_loss_components_and_weights(physics):
    side = physics.grid.hr_size
    output, target = fake_output(side)
    mse = torch.mean((output.hr - target) ** 2)
    sym = sum(torch.mean(s ** 2) for s in output.extras["sym"])
    l1 = torch.mean(torch.abs(output.extras["aligned"] - output.extras["reference"][:, None]))
    default = get_model("derefnet", physics, **SMOKE)
    total, parts = default.loss(output, target)
    torch.testing.assert_close(total, mse + 0.01 * sym + 0.01 * l1)  # Table I group A
    assert parts == pytest.approx({"mse": mse.item(), "constraint": sym.item(), "alignment": l1.item()},
                                  rel=1e-6)
    weighted = get_model("derefnet", physics, **SMOKE, regression_weight=0.5, constraint_weight=0.1,
                         alignment_weight=0.2)
    torch.testing.assert_close(weighted.loss(output, target)[0], 0.5 * mse + 0.1 * sym + 0.2 * l1)
    shipped = get_model("derefnet", physics, **SMOKE, constraint_weight=0.1, alignment_weight=0.1,
                        faithful_loss_weights=True)
    windows = SHIPPED_WINDOWS_PER_BATCH
    l1_sum_per_trajectory = windows * 4 * side * side * l1  # sum over windows, neighbours, cells
    torch.testing.assert_close(shipped.loss(output, target)[0],
                               2 * (windows * mse + 0.1 * sym + 0.1 * l1_sum_per_trajectory))


def test_alignment_loss_reaches_the_unfolding_stage(physics):
    """The alignment target (the middle frame's un-gated ISTA output) is not detached (B9)."""
    torch.manual_seed(6)
    model = get_model("derefnet", physics, **SMOKE, regression_weight=0.0, constraint_weight=0.0)
    lr, target = _windows_and_targets(physics, 2)
    output = model(lr)
    assert output.extras["reference"].requires_grad
    model.loss(output, target)[0].backward()
    assert model.features.phases[0].forward_in.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- parameter counts


def test_parameter_count_of_the_default_architecture(physics):
    """1,482,879 = the count of the shipped code (docs/methods.md §3.8), not the printed 0.89 M
    (B25): no consistent subset of the modules gives 0.89 M; without the gate 0.30 M."""
    model = get_model("derefnet", physics)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(model.features) == 9 * 19_010 == 171_090
    assert count(model.time_gate) == 1089 * 1089 + 1089 == 1_187_010
    alignment = model.alignment
    assert count(alignment.embed) == 320
    assert count(alignment.attention) == 1_094
    assert count(alignment.sample) == count(alignment.refine) == 14_418
    assert count(alignment.project) == 289
    assert count(model.tail) == 94_240
    assert count(model) == 1_482_879
    assert count(get_model("derefnet", physics, time_encoder=False)) == 295_869


# ------------------------------------------------------------------------------ blocks


def test_warp_identity_and_integer_shift():
    torch.manual_seed(9)
    x = torch.randn(2, 3, 6, 8)
    zero = torch.zeros(2, 2, 6, 8)
    torch.testing.assert_close(warp(x, zero), x, rtol=1e-5, atol=1e-5)
    down = zero.clone()
    down[:, 0] = 1.0  # sample one row below
    expected = torch.cat([x[:, :, 1:], torch.zeros(2, 3, 1, 8)], dim=2)
    torch.testing.assert_close(warp(x, down), expected, rtol=1e-5, atol=1e-5)
    aligner = FlowAlignment(3)
    torch.testing.assert_close(aligner(torch.randn_like(x), x), x, rtol=1e-5, atol=1e-5)


def test_selective_attention_shape_and_rejects_odd_channels():
    attention = SelectiveAttention(8)
    assert attention(torch.randn(3, 8, 5, 5), torch.randn(3, 8, 5, 5)).shape == (3, 8, 5, 5)
    with pytest.raises(ValueError, match="even"):
        SelectiveAttention(5)


def test_frame_index_encoding_and_gate():
    encoding = frame_index_encoding(5, 3)
    torch.testing.assert_close(encoding, torch.tensor([[0.0] * 3, [0.2] * 3, [0.4] * 3, [0.6] * 3,
                                                       [0.8] * 3]))
    gate = TemporalGate(4)
    with torch.no_grad():
        gate.mlp.weight.zero_()
        gate.mlp.weight[:, 0] = 1.0
        gate.mlp.bias.zero_()
    features = torch.ones(2, 5, 4)
    expected = torch.sigmoid(torch.arange(5.0) / 5)[:, None].expand(5, 4)
    torch.testing.assert_close(gate(features), expected.expand(2, 5, 4))


def test_shared_frames_are_unfolded_once(physics):
    """Sliding windows of one sequence: the unfolding sees each distinct frame once, and the
    outputs and the loss equal those of the windows computed one by one."""
    torch.manual_seed(11)
    model = get_model("derefnet", physics, **SMOKE)
    sequence = torch.rand(9, SIZE, SIZE) * 255
    lr = torch.stack([sequence[start:start + WINDOW] for start in range(5)])
    _, target = _windows_and_targets(physics, 5)
    seen = []
    handle = model.features.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    output = model(lr)
    handle.remove()
    assert seen == [9]
    singles = [model(lr[index:index + 1]) for index in range(5)]
    torch.testing.assert_close(output.hr, torch.cat([single.hr for single in singles]), rtol=1e-4, atol=1e-4)
    constraint = sum(torch.mean(torch.cat([single.extras["sym"][k] for single in singles]) ** 2)
                     for k in range(len(output.extras["sym"])))
    assert model.loss(output, target)[1]["constraint"] == pytest.approx(constraint.item(), rel=1e-5)
