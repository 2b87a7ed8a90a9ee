import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.coords import Grid
from pipeline.data import Windows
from pipeline.methods import PhysicsOperator
from pipeline.physics import build_phi_closed_form, render_batch
from pipeline.training import MethodConfig, TrainerConfig, TrainingError, build_method, train_method


@pytest.fixture(scope="module")
def tiny():
    """A PhysicsOperator and 48 windows of on-grid 2-target frames (repeated 5 times)."""
    grid, rng = Grid(), np.random.default_rng(0)
    phi = build_phi_closed_form()
    cells = rng.integers(6, grid.hr_size - 6, (48, 2, 2))
    x, y = grid.to_lr_coordinate(cells[..., 0]), grid.to_lr_coordinate(cells[..., 1])
    b = rng.uniform(220, 250, (48, 2))
    frames = render_batch(x, y, b).astype(np.float32)
    hr = np.zeros((48, grid.hr_size, grid.hr_size), np.float32)
    hr[np.arange(48)[:, None], cells[..., 0], cells[..., 1]] = b
    maps = hr.reshape(48, -1).astype(np.float64)
    z = frames.reshape(48, -1).astype(np.float64)
    qinit = np.linalg.lstsq(z.T @ z + 1e-3 * np.eye(121), z.T @ maps, rcond=None)[0].T
    windows = Windows(np.repeat(frames[:, None], 5, axis=1), hr, np.arange(48), np.full(48, 2))
    return PhysicsOperator(phi, qinit), windows


TRAINER = TrainerConfig(device="cpu", seed=3, mixed_precision=False, eval_batch=64, threads=0, train_window_stride=1)


def _config(epochs=3, **model):
    return MethodConfig(name="srcnn", epochs=epochs, batch=16, lr=1e-3, weight_decay=0.0, model=model)


def _validate(model) -> float:
    return -float(sum(p.detach().abs().sum() for p in model.parameters()))


def test_interrupted_run_resumes_to_identical_weights(tiny, tmp_path):
    physics, windows = tiny
    straight = train_method(_config(), TRAINER, physics, windows, _validate, tmp_path / "a.pt", progress=False)

    def interrupt(epoch, step):
        if epoch == 1 and step == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        train_method(_config(), TRAINER, physics, windows, _validate, checkpoint, progress=False, on_step=interrupt)
    assert checkpoint.is_file()  # epoch 0 was saved
    resumed_from = []
    resumed = train_method(_config(), TRAINER, physics, windows, _validate, checkpoint, progress=False,
                           on_step=lambda e, s: resumed_from.append(e))
    assert min(resumed_from) == 1  # epoch 0 was not trained again
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key
    assert [row["train_loss"] for row in straight.history] == [row["train_loss"] for row in resumed.history]


def test_a_checkpoint_of_other_settings_is_ignored(tiny, tmp_path):
    physics, windows = tiny
    checkpoint = tmp_path / "c.pt"
    train_method(_config(epochs=1), TRAINER, physics, windows, _validate, checkpoint, progress=False)
    steps = []
    other = MethodConfig(name="srcnn", epochs=1, batch=16, lr=5e-4, weight_decay=0.0, model={})
    train_method(other, TRAINER, physics, windows, _validate, checkpoint, progress=False,
                 on_step=lambda e, s: steps.append(e))
    assert steps and steps[0] == 0


def test_loss_decreases_and_history_is_complete(tiny, tmp_path):
    physics, windows = tiny
    result = train_method(_config(epochs=4), TRAINER, physics, windows, _validate, tmp_path / "d.pt", progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)


def test_non_finite_loss_names_method_epoch_and_step(tiny, tmp_path):
    physics, windows = tiny
    broken = Windows(windows.lr.copy(), windows.hr.copy(), windows.t, windows.f)
    broken.hr[5, 0, 0] = np.inf
    with pytest.raises(TrainingError, match=r"method srcnn: non-finite loss .* at epoch 0, step \d"):
        train_method(_config(), TRAINER, physics, broken, _validate, tmp_path / "e.pt", progress=False)


def test_non_trainable_method_is_returned_as_built(tiny, tmp_path):
    physics, windows = tiny
    config = MethodConfig(name="ista", epochs=0, batch=1, lr=1e-4, weight_decay=0.0, model={"iterations": 5})
    result = train_method(config, TRAINER, physics, windows, lambda m: pytest.fail("validated"),
                          tmp_path / "f.pt", progress=False)
    assert result.history == [] and "physics.phi" in result.best_state
    assert not (tmp_path / "f.pt").exists()


def test_bad_method_settings_are_config_errors(tiny):
    physics, _ = tiny
    with pytest.raises(ConfigError, match="train.srcnn.model"):
        build_method(_config(depth=3), physics)
    with pytest.raises(ConfigError, match="train.nope"):
        build_method(MethodConfig(name="nope", epochs=1, batch=1, lr=1.0, weight_decay=0.0, model={}), physics)
    with pytest.raises(ConfigError, match="train.srcnn.lr = 0"):
        MethodConfig.from_section("srcnn", {"epochs": 1, "batch": 1, "lr": 0, "weight_decay": 0, "model": {}})
    with pytest.raises(ConfigError, match="trainer.device = 'tpu'"):
        TrainerConfig.from_section({"device": "tpu", "seed": 0, "mixed_precision": True, "eval_batch": 1,
                                    "threads": 0, "train_window_stride": 1})
