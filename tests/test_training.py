import dataclasses
import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.coords import Grid
from pipeline.data import Windows
from pipeline.methods import PhysicsOperator
from pipeline.physics import build_phi_closed_form
from pipeline.method_specs import MethodSpec, build_method, method_spec
from pipeline.settings import TrainBudget, TrainerConfig
from pipeline.sensor import Sensor
from pipeline.training import TrainingError, epoch_order, seed_checkpoint, train_method

from physics_helpers import on_grid_windows


@pytest.fixture(scope="module")
def tiny():
    """A PhysicsOperator and 48 windows of on-grid 2-target frames (repeated 5 times)."""
    return on_grid_windows()


TRAINER = TrainerConfig(device="cpu", seeds=(3,), mixed_precision=False, eval_batch=64, threads=0, val_windows=None)
CPU = torch.device("cpu")


def _config(epochs=3, lr=1e-3, windows=None, **model):
    budget = TrainBudget(epochs=epochs, windows_per_epoch=windows, batch=16, lr=lr, weight_decay=0.0)
    return MethodSpec(id="srcnn", name="srcnn", module="srcnn.py", model=model, train=budget)


def _validate(model) -> float:
    return -float(sum(p.detach().abs().sum() for p in model.parameters()))


def test_interrupted_run_resumes_to_identical_weights(tiny, tmp_path):
    physics, windows = tiny
    straight = train_method(_config(), TRAINER, physics, windows, _validate, tmp_path / "a.pt", CPU, progress=False)

    def interrupt(epoch, step):
        if epoch == 1 and step == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        train_method(_config(), TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                       on_step=interrupt)
    assert checkpoint.is_file()  # epoch 0 was saved
    resumed_from = []
    resumed = train_method(_config(), TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                           on_step=lambda e, s: resumed_from.append(e))
    assert min(resumed_from) == 1  # epoch 0 was not trained again
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key
    assert [row["train_loss"] for row in straight.history] == [row["train_loss"] for row in resumed.history]


def _first_epoch_after_checkpoint(tiny, tmp_path, capsys, config, physics, rerun_windows=None) -> int:
    """Train 1 of 2 epochs, then rerun with ``config`` on ``physics``: the epoch it starts at."""
    _, windows = tiny
    checkpoint = tmp_path / "c.pt"

    def stop(epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_method(_config(epochs=2), TRAINER, tiny[0], windows, _validate, checkpoint, CPU, progress=False,
                     on_step=stop)
    capsys.readouterr()
    steps = []
    train_method(config, TRAINER, physics, rerun_windows or windows, _validate, checkpoint, CPU, progress=False,
                 on_step=lambda e, s: steps.append(e))
    return steps[0]


def test_checkpoint_of_the_same_inputs_is_resumed(tiny, tmp_path, capsys):
    assert _first_epoch_after_checkpoint(tiny, tmp_path, capsys, _config(epochs=2), tiny[0]) == 1
    assert "discarding" not in capsys.readouterr().err


@pytest.mark.parametrize("change", ["settings", "qinit", "sensor", "grid"])
def test_checkpoint_from_other_inputs_is_discarded_with_a_notice(tiny, tmp_path, capsys, change):
    physics, windows = tiny
    config, rerun_windows = _config(epochs=2), None
    phi, qinit = physics.phi.double().numpy(), physics.qinit.double().numpy()
    if change == "settings":
        config = _config(epochs=2, lr=5e-4)
    elif change == "qinit":
        physics = PhysicsOperator(phi, qinit * 1.01)
    elif change == "sensor":
        physics = physics.with_sensor(Sensor(noise_sigma=3.0))
    else:  # another grid (phi.c): the old weights would not even fit a c = 5 model of other physics
        grid = Grid(11, 5)
        physics = PhysicsOperator(build_phi_closed_form(11, 5), np.zeros((grid.n_hr, grid.n_lr)))
        rerun_windows = Windows(windows.lr, np.zeros((len(windows), 55, 55), np.float32), windows.t, windows.f)
    assert _first_epoch_after_checkpoint(tiny, tmp_path, capsys, config, physics, rerun_windows) == 0
    assert "discarding checkpoint" in capsys.readouterr().err


def test_unreadable_checkpoint_is_ignored_with_a_notice(tiny, tmp_path, capsys):
    physics, windows = tiny
    checkpoint = tmp_path / "bad.pt"
    checkpoint.write_bytes(b"this is not a torch checkpoint")
    steps = []
    train_method(_config(epochs=1), TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                 on_step=lambda e, s: steps.append(e))
    assert steps[0] == 0 and "ignoring unreadable checkpoint" in capsys.readouterr().err


def test_windows_per_epoch_limits_the_steps(tiny, tmp_path):
    physics, windows = tiny
    steps = []
    train_method(_config(epochs=2, windows=20), TRAINER, physics, windows, _validate, tmp_path / "w.pt", CPU,
                 progress=False, on_step=lambda e, s: steps.append((e, s)))
    assert steps == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 20 windows in batches of 16


def test_trajectory_draw_keeps_each_trajectorys_windows_together():
    """draw: trajectories shuffles trajectories, each one's windows consecutive in frame order."""
    t, f = np.repeat(np.arange(6), 4), np.tile(np.arange(2, 6), 6)
    windows = Windows(np.zeros((24, 5, 1, 1)), np.zeros((24, 1, 1)), t, f)
    order = epoch_order(windows, "trajectories", torch.Generator().manual_seed(0)).numpy()
    assert sorted(order) == list(range(24))
    blocks = t[order].reshape(6, 4)
    assert (blocks == blocks[:, :1]).all() and sorted(blocks[:, 0]) == list(range(6))
    assert (f[order].reshape(6, 4) == np.arange(2, 6)).all()
    assert list(blocks[:, 0]) != list(range(6))  # shuffled (this seed)
    again = epoch_order(windows, "trajectories", torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(order, again)
    assert sorted(epoch_order(windows, "windows", torch.Generator().manual_seed(0)).tolist()) == list(range(24))


def test_train_draw_is_validated():
    with pytest.raises(ConfigError, match="methods.x.train.draw"):
        TrainBudget.from_section({"epochs": 1, "windows_per_epoch": None, "batch": 2, "lr": 1e-3,
                                  "weight_decay": 0.0, "draw": "frames"}, "methods.x.train")


def test_loss_decreases_and_history_is_complete(tiny, tmp_path):
    physics, windows = tiny
    result = train_method(_config(epochs=4), TRAINER, physics, windows, _validate, tmp_path / "d.pt", CPU,
                          progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)


def test_non_finite_loss_names_method_epoch_and_step(tiny, tmp_path):
    physics, windows = tiny
    broken = Windows(windows.lr.copy(), windows.hr.copy(), windows.t, windows.f)
    broken.hr[5, 0, 0] = np.inf
    with pytest.raises(TrainingError, match=r"method srcnn: non-finite loss .* at epoch 0, step \d"):
        train_method(_config(), TRAINER, physics, broken, _validate, tmp_path / "e.pt", CPU, progress=False)


def test_non_trainable_method_is_returned_as_built(tiny, tmp_path):
    physics, windows = tiny
    config = MethodSpec(id="ista", name="ista", module="ista.py", model={"iterations": 5}, train=None)
    result = train_method(config, TRAINER, physics, windows, lambda m: pytest.fail("validated"),
                          tmp_path / "f.pt", CPU, progress=False)
    assert result.history == [] and "physics.phi" in result.best_state
    assert not (tmp_path / "f.pt").exists()


def test_bad_method_settings_are_config_errors(tiny):
    physics, _ = tiny
    with pytest.raises(ConfigError, match="methods.srcnn.model"):
        build_method(_config(depth=3), physics)
    train = {"epochs": 1, "windows_per_epoch": None, "batch": 1, "lr": 0, "weight_decay": 0}
    with pytest.raises(ConfigError, match="methods.srcnn.train.lr = 0"):
        method_spec({"srcnn": {"module": "srcnn.py", "model": {}, "train": train}}, "srcnn")
    with pytest.raises(ConfigError, match="methods.nope"):
        method_spec({"nope": {"module": "nope.py"}}, "nope")
    with pytest.raises(ConfigError, match="methods.srcnn.module = 'istanet.py'.*srcnn.py"):
        method_spec({"srcnn": {"module": "istanet.py", "model": {}, "train": {**train, "lr": 1e-3}}}, "srcnn")
    with pytest.raises(ConfigError, match="methods.srcnn.train = None.*trainable"):
        method_spec({"srcnn": {"module": "srcnn.py", "model": {}}}, "srcnn")
    with pytest.raises(ConfigError, match="methods.ista.train .*nothing to train"):
        method_spec({"ista": {"module": "ista.py", "model": {}, "train": train}}, "ista")
    with pytest.raises(ConfigError, match="trainer.device = 'tpu'"):
        TrainerConfig.from_section({"device": "tpu", "seeds": [0], "mixed_precision": True, "eval_batch": 1,
                                    "threads": 0, "val_windows": None})
    good = {"device": "cpu", "mixed_precision": True, "eval_batch": 1, "threads": 0, "val_windows": None}
    assert TrainerConfig.from_section({**good, "seeds": [0, 1, 2]}).seeds == (0, 1, 2)
    for seeds, message in (([], "non-empty list"), ([0, 0], "distinct"), ([0, -1], r"trainer.seeds\[1\]"),
                           (0, "non-empty list")):
        with pytest.raises(ConfigError, match=message):
            TrainerConfig.from_section({**good, "seeds": seeds})


def test_each_seed_is_its_own_reproducible_run(tiny, tmp_path):
    """A seed fixes the initial weights and the window draws: the same seed gives identical
    weights, another seed other weights; the checkpoint of each seed lies beside the stage's."""
    physics, windows = tiny
    two = dataclasses.replace(TRAINER, seeds=(3, 4))
    first = train_method(_config(epochs=1), two, physics, windows, _validate, tmp_path / "a.pt", CPU, progress=False)
    again = train_method(_config(epochs=1), two, physics, windows, _validate, tmp_path / "b.pt", CPU, progress=False,
                         seed=3)
    other = train_method(_config(epochs=1), two, physics, windows, _validate, tmp_path / "c.pt", CPU, progress=False,
                         seed=4)
    assert all(torch.equal(first.best_state[k], again.best_state[k]) for k in first.best_state)  # default: seeds[0]
    assert not all(torch.equal(first.best_state[k], other.best_state[k]) for k in first.best_state)
    assert seed_checkpoint(tmp_path / "srcnn.pt", 4) == tmp_path / "srcnn.seed4.pt"


def test_cosine_schedule_warms_up_then_decays_to_zero():
    budget = TrainBudget(epochs=4, windows_per_epoch=100, batch=10, lr=1e-3, weight_decay=0.0,
                         schedule="cosine", warmup_windows=40)
    total = budget.windows_per_run(1000)
    assert total == 400
    assert budget.lr_at(0, total) == pytest.approx(1e-3 / 40)
    assert budget.lr_at(39, total) == pytest.approx(1e-3)
    assert budget.lr_at(40, total) == pytest.approx(1e-3)
    assert budget.lr_at(220, total) == pytest.approx(0.5e-3)  # halfway through the decay
    assert budget.lr_at(400, total) == pytest.approx(0.0, abs=1e-12)
    constant = dataclasses.replace(budget, schedule="constant")
    assert {constant.lr_at(seen, total) for seen in (0, 39, 399)} == {1e-3}


@pytest.mark.parametrize("key, value", [("schedule", "linear"), ("warmup_windows", -1), ("grad_clip", 0.0)])
def test_schedule_keys_are_validated(key, value):
    given = {"epochs": 1, "windows_per_epoch": None, "batch": 2, "lr": 1e-3, "weight_decay": 0.0, key: value}
    with pytest.raises(ConfigError, match=f"methods.x.train.{key}"):
        TrainBudget.from_section(given, "methods.x.train")


def test_history_counts_windows_and_seconds_and_the_schedule_is_applied(tiny, tmp_path):
    physics, windows = tiny
    spec = dataclasses.replace(_config(), train=TrainBudget(epochs=2, windows_per_epoch=32, batch=16, lr=1e-3,
                                                            weight_decay=0.0, schedule="cosine", warmup_windows=16,
                                                            grad_clip=1.0))
    result = train_method(spec, TRAINER, physics, windows, _validate, tmp_path / "s.pt", CPU, progress=False)
    assert [row["windows"] for row in result.history] == [32, 64]
    assert result.history[0]["lr"] == pytest.approx(spec.train.lr_at(31, 64))
    assert result.history[1]["lr"] == pytest.approx(spec.train.lr_at(63, 64)) and result.history[1]["lr"] < 1e-4
    assert 0 <= result.history[0]["cpu_seconds"] <= result.history[1]["cpu_seconds"]
    assert 0 <= result.history[0]["wall_seconds"] <= result.history[1]["wall_seconds"]
    assert result.finished


def test_after_epoch_stops_a_run_unfinished_and_a_rerun_completes_it_identically(tiny, tmp_path):
    physics, windows = tiny
    spec = _config(epochs=3)
    straight = train_method(spec, TRAINER, physics, windows, _validate, tmp_path / "a.pt", CPU, progress=False)
    checkpoint = tmp_path / "elsewhere" / "b.pt"
    part = train_method(spec, TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                        after_epoch=lambda history: True)
    assert not part.finished and len(part.history) == 1 and checkpoint.is_file()
    moved = tmp_path / "fresh" / "b.pt"  # the checkpoint travels to another folder, inputs rebuilt afresh
    moved.parent.mkdir()
    moved.write_bytes(checkpoint.read_bytes())
    rebuilt = PhysicsOperator(physics.phi.double().numpy().copy(), physics.qinit.double().numpy().copy())
    copied = Windows(windows.lr.copy(), windows.hr.copy(), windows.t.copy(), windows.f.copy())
    rest = train_method(spec, TRAINER, rebuilt, copied, _validate, moved, CPU, progress=False)
    assert rest.finished and [row["epoch"] for row in rest.history] == [0, 1, 2]
    for key, value in straight.best_state.items():
        assert torch.equal(value, rest.best_state[key]), key


def test_a_checkpoint_names_the_input_that_differs_and_can_be_accepted(tiny, tmp_path, capsys):
    physics, windows = tiny
    spec = _config(epochs=2)
    checkpoint = tmp_path / "c.pt"
    train_method(spec, TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                 after_epoch=lambda history: True)
    other = PhysicsOperator(physics.phi.double().numpy(), physics.qinit.double().numpy() * (1 + 1e-5))
    epochs = []
    train_method(spec, TRAINER, other, windows, _validate, checkpoint, CPU, progress=False,
                 on_step=lambda e, s: epochs.append(e), accept_inputs=True)
    assert min(epochs) == 1 and "qinit differ" in capsys.readouterr().err
    train_method(spec, TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                 after_epoch=lambda history: True)
    epochs.clear()
    train_method(_config(epochs=2, lr=5e-4),
                 TRAINER, physics, windows, _validate, checkpoint, CPU, progress=False,
                 on_step=lambda e, s: epochs.append(e), accept_inputs=True)
    assert min(epochs) == 0 and "settings differ" in capsys.readouterr().err  # settings are never accepted


def test_max_windows_caps_every_run_to_one_short_epoch(tiny, tmp_path):
    physics, windows = tiny
    steps = []
    trainer = dataclasses.replace(TRAINER, max_windows=20)
    result = train_method(_config(epochs=5), trainer, physics, windows, _validate, tmp_path / "m.pt", CPU,
                          progress=False, on_step=lambda e, s: steps.append((e, s)))
    assert steps == [(0, 0), (0, 1)] and [row["windows"] for row in result.history] == [20]


def test_validate_every_scores_only_those_epochs_and_picks_the_best_among_them(tiny, tmp_path):
    physics, windows = tiny
    spec = dataclasses.replace(_config(), train=dataclasses.replace(_config().train, epochs=5, validate_every=2))
    calls = []

    def validate(model):
        calls.append(1)
        return float(len(calls))

    result = train_method(spec, TRAINER, physics, windows, validate, tmp_path / "v.pt", CPU, progress=False)
    scores = [row["val_cso_map"] for row in result.history]
    assert len(calls) == 3 and [math.isnan(x) for x in scores] == [True, False, True, False, False]


def test_a_loss_checked_every_few_steps_still_stops_a_diverged_run(tiny, tmp_path):
    physics, windows = tiny
    trainer = dataclasses.replace(TRAINER, check_every=2)
    bad = Windows(windows.lr * np.float32("nan"), windows.hr, windows.t, windows.f)
    with pytest.raises(TrainingError, match="checked every 2 steps"):
        train_method(_config(epochs=1), trainer, physics, bad, _validate, tmp_path / "n.pt", CPU, progress=False)
