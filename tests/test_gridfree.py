"""GridFree-Net: continuous decoding (no grid snapping), the broadened scene sampler, the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.methods import get_model, method_class
from physics_helpers import fitted_physics


@pytest.fixture(scope="module", params=[3, 5], ids=["c3", "c5"])
def model(request):
    torch.manual_seed(0)
    return get_model("gridfree", fitted_physics(request.param, maps=200), **method_class("gridfree").smoke_params)


def _perfect_fields(model, targets: np.ndarray) -> dict:
    """The fields a perfect network would output for one window holding ``targets`` (k, 2):
    p = 1 in each target's cell, its offset pointing at the target, p = 0 elsewhere."""
    side, c = model.grid.hr_size, model.grid.c
    p = torch.zeros(1, side, side)
    x, y = model.centre_x.clone()[None], model.centre_y.clone()[None]
    for tx, ty in targets:
        row, column = round(c * tx + (c - 1) / 2), round(c * ty + (c - 1) / 2)
        p[0, row, column] = 1.0
        x[0, row, column], y[0, row, column] = tx, ty
    return {"p": p, "x": x, "y": y}


def test_a_perfect_prediction_decodes_to_the_true_positions_without_snapping(model):
    targets = np.array([[5.123, 4.871], [5.461, 5.302], [4.702, 5.049]])  # off every cell centre
    (found,) = model.decode(_perfect_fields(model, targets))
    assert found.shape == (3, 3)
    order = np.lexsort((found[:, 1], found[:, 0]))
    expected = targets[np.lexsort((targets[:, 1], targets[:, 0]))]
    np.testing.assert_allclose(found[order, :2], expected, atol=0.01)
    assert np.all(found[:, 2] == 1.0)


def test_probability_spread_over_neighbours_is_one_detection_and_an_empty_map_none(model):
    fields = _perfect_fields(model, np.array([[5.0, 5.0]]))
    row = col = 5 * model.grid.c + (model.grid.c - 1) // 2
    fields["p"][0, row, col], fields["p"][0, row, col + 1] = 0.3, 0.25  # one target, split over two cells
    (found,) = model.decode(fields)
    assert len(found) == 1 and found[0, 2] == pytest.approx(0.55)
    empty = {key: value * 0 if key == "p" else value for key, value in fields.items()}
    assert model.decode(empty)[0].shape == (0, 3)


def test_inference_returns_detections_per_window_and_training_does_not(model):
    lr = torch.rand(3, 5, 11, 11) * 255
    with torch.no_grad():
        output = model(lr)
    assert len(output.detections) == 3 and all(d.shape[1] == 3 for d in output.detections)
    assert model(lr).detections is None  # under autograd (the trainer's forward): no decoding


def test_sampler_is_seeded_by_torch_and_records_through_the_sensor(model):
    torch.manual_seed(3)
    first = model.sampler.sample(16, torch.device("cpu"))
    torch.manual_seed(3)
    again = model.sampler.sample(16, torch.device("cpu"))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    lr, targets, mask = first
    assert lr.shape == (16, 5, 11, 11) and targets.shape == (16, model.sampler.max_targets, 3)
    assert torch.equal(lr, lr.round()) and lr.min() >= 0 and lr.max() <= 255  # 8-bit, saturating
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= model.sampler.max_targets
    assert torch.all(targets[..., 2][~mask] == 0) and torch.all(targets[..., 2][mask] > 0)


def test_loss_trains_on_its_own_scenes_and_falls(model):
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        total, parts = model.loss(None, torch.zeros(16, 1, 1))
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(total.item())
        assert np.isfinite(parts["location_nll"]) and np.isfinite(parts["count_nll"])
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
