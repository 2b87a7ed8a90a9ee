"""Tests of pipeline.methods: registry, physics object, every registered method, losses."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.coords import Grid
from pipeline.config import load_params
from pipeline.data import Windows
from pipeline.methods import (MethodOutput, PhysicsOperator, UnmixingMethod, available_models,
                              get_model, method_class, register_model)
from pipeline.method_specs import MethodSpec, method_spec
from pipeline.settings import TrainBudget, TrainerConfig
from pipeline.training import train_method
from pipeline.physics import build_phi_closed_form

from physics_helpers import fitted_physics, rendered_windows, sparse_maps

SIZE, C, SIGMA = 11, 3, 0.5
GRID = Grid(SIZE, C)
WINDOW = 5


def smoke(name: str, physics: PhysicsOperator) -> UnmixingMethod:
    """A quick instance of a registered method (its declared ``smoke_params``)."""
    return get_model(name, physics, **method_class(name).smoke_params)


def as_windows(lr_flat: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, m^2) frames -> (B, WINDOW, m, m) windows repeating each frame."""
    frames = torch.as_tensor(lr_flat, dtype=dtype).reshape(-1, 1, SIZE, SIZE)
    return frames.repeat(1, WINDOW, 1, 1)


@pytest.fixture(scope="module")
def phi() -> np.ndarray:
    return build_phi_closed_form(SIZE, C, SIGMA)


@pytest.fixture(scope="module")
def physics() -> PhysicsOperator:
    """Phi plus Q = X Y^T (Y Y^T)^-1 fitted on 2,000 sparse maps and their 8-bit-rounded frames,
    as the pipeline fits it on recorded frames (on exact frames Phi Q = I and the first
    unfolding step of a Q_init start is a no-op that never receives a gradient)."""
    return fitted_physics(C, rounded=True)


@pytest.fixture(scope="module")
def dataset(phi) -> tuple[torch.Tensor, torch.Tensor]:
    """8 windows (8, 5, m, m) rendered as Phi X, and their (8, c m, c m) target maps."""
    x = sparse_maps(GRID, np.random.default_rng(1), 8)
    target = torch.as_tensor(x, dtype=torch.float32).reshape(8, GRID.hr_size, GRID.hr_size)
    return as_windows(x @ phi.T), target


@pytest.fixture(scope="module", params=[3, 5], ids=["c3", "c5"])
def physics_c(request) -> PhysicsOperator:
    """The registry-wide tests' physics: every method at c = 3 and at c = 5 (frames 8-bit rounded)."""
    return fitted_physics(request.param, rounded=True)


@pytest.fixture(scope="module")
def dataset_c(physics_c) -> tuple[torch.Tensor, torch.Tensor]:
    """8 windows (8, 5, m, m) rendered as Phi X at the physics' c, and their target maps."""
    return rendered_windows(physics_c, 8, seed=1)


# ---------------------------------------------------------------------------------- registry


def test_every_registered_method_is_in_the_pipeline():
    """params.yaml ``methods`` holds every registered method, each entry valid (module included)."""
    methods = load_params(Path(__file__).resolve().parents[1] / "params.yaml")["methods"]
    assert set(available_models()) <= {methods[key].get("method", key) for key in methods}
    for key in methods:
        spec = method_spec(methods, key)
        assert spec.trainable == method_class(spec.name).trainable
    assert available_models() == sorted(available_models())
    assert "ista" not in available_models(trainable=True)


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("ista")


@pytest.mark.parametrize("name", ["Ista", "ista-net", "ista net", "", "ísta"])
def test_bad_name_raises(name):
    with pytest.raises(ValueError, match="must match"):
        register_model(name)


def test_registering_a_non_method_raises():
    with pytest.raises(TypeError, match="not an UnmixingMethod"):
        register_model("not_a_method_for_tests")(dict)
    assert "not_a_method_for_tests" not in available_models()


def test_unknown_name_lists_available(physics):
    with pytest.raises(KeyError) as info:
        get_model("no_such_method", physics)
    for name in available_models():
        assert name in str(info.value)


def test_unexpected_param_names_method_and_param(physics):
    with pytest.raises(TypeError, match=r"'srcnn'.*bogus_width"):
        get_model("srcnn", physics, bogus_width=3)


def test_params_reach_constructor(physics):
    model = get_model("ista_net", physics, phases=2, channels=4)
    assert len(model.phases) == 2
    assert model.phases[0].forward_in.out_channels == 4


# ---------------------------------------------------------------------------- physics object


def test_physics_operators_match_numpy(physics, phi):
    rng = np.random.default_rng(2)
    hr = rng.uniform(0, 250, size=(3, GRID.n_hr))
    lr = rng.uniform(0, 250, size=(3, GRID.n_lr))
    q = physics.qinit.numpy()
    ops = PhysicsOperator(phi, q).to(torch.float64)
    np.testing.assert_allclose(ops.A(torch.tensor(hr)).numpy(), hr @ phi.T, rtol=1e-5)
    np.testing.assert_allclose(ops.A_adjoint(torch.tensor(lr)).numpy(), lr @ phi, rtol=1e-5)
    np.testing.assert_allclose(ops.initial(torch.tensor(lr)).numpy(), lr @ q.T, rtol=1e-10)
    np.testing.assert_allclose(ops.gram().numpy(), phi.T @ phi, rtol=1e-5, atol=1e-9)
    assert ops.grid == GRID
    assert physics.phi.dtype == torch.float32 and physics.qinit.dtype == torch.float32


def test_physics_rejects_bad_shapes(phi):
    qinit = np.zeros((GRID.n_hr, GRID.n_lr))
    with pytest.raises(ValueError, match="qinit"):
        PhysicsOperator(phi, qinit.T)
    with pytest.raises(ValueError):
        PhysicsOperator(phi[:, :-1], qinit)
    with pytest.raises(ValueError, match="2-D"):
        PhysicsOperator(phi.ravel(), qinit)
    ops = PhysicsOperator(phi, qinit)
    with pytest.raises(ValueError, match="hr_flat"):
        ops.A(torch.zeros(2, GRID.n_lr))
    with pytest.raises(ValueError, match="lr_flat"):
        ops.initial(torch.zeros(2, SIZE, SIZE))


# ------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", available_models())
def test_forward_shape_and_finite(name, physics_c, dataset_c):
    lr, _ = dataset_c
    model = smoke(name, physics_c)
    with torch.no_grad():
        output = model(lr[:4])
    assert isinstance(output, MethodOutput)
    assert output.hr.shape == (4, physics_c.grid.hr_size, physics_c.grid.hr_size)
    assert torch.isfinite(output.hr).all()


@pytest.mark.parametrize("name", available_models(trainable=True))
def test_inference_gives_the_training_forward_map(name, physics_c, dataset_c):
    """Evaluation runs under no_grad, where methods may skip loss-only work (the unfolding
    nets' symmetry residuals): the HR map must be the one the training forward gives."""
    lr, _ = dataset_c
    model = smoke(name, physics_c).eval()
    recorded = model(lr[:3]).hr.detach()
    with torch.no_grad():
        torch.testing.assert_close(model(lr[:3]).hr, recorded)


@pytest.mark.parametrize("name", available_models())
def test_single_frame_methods_use_only_the_middle_frame(name, physics_c, dataset_c):
    lr, _ = dataset_c
    model = smoke(name, physics_c)
    if model.window != 1:
        pytest.skip(f"{name} is multi-frame")
    scrambled = lr[:2].clone()
    scrambled[:, [0, 1, 3, 4]] = torch.rand_like(scrambled[:, [0, 1, 3, 4]]) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(scrambled).hr, model(lr[:2]).hr)
        with pytest.raises(ValueError, match="odd"):
            model(lr[:2, :4])
        with pytest.raises(ValueError, match="shape"):
            model(lr[:2, :, :-1])


@pytest.mark.parametrize("name", available_models(trainable=True))
def test_training_smoke(name, physics_c, dataset_c):
    lr, target = dataset_c
    torch.manual_seed(0)
    model = smoke(name, physics_c)
    optimiser = torch.optim.Adam(model.generator_parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        total, components = model.loss(model(lr), target)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(total.item())
        assert all(np.isfinite(value) for value in components.values())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", available_models())
def test_physics_is_buffers_and_moves(name, physics_c, dataset_c):
    lr, _ = dataset_c
    fast = method_class(name).smoke_params
    model = get_model(name, physics_c, **fast)
    state = model.state_dict()
    assert {"physics.phi", "physics.qinit"} <= set(state)
    parameter_names = {key for key, _ in model.named_parameters()}
    assert not any(key.startswith("physics.") for key in parameter_names)
    assert model.trainable == bool(parameter_names)
    model64 = get_model(name, PhysicsOperator(physics_c.phi.numpy(), physics_c.qinit.numpy()),
                        **fast).to(torch.float64)
    with torch.no_grad():
        output = model64(lr[:2].double())
    assert output.hr.dtype == torch.float64
    assert model64.physics.phi.dtype == torch.float64
    if torch.cuda.is_available():
        model_gpu = model.to("cuda")
        with torch.no_grad():
            output = model_gpu(lr[:2].cuda())
        assert output.hr.device.type == "cuda"
        torch.testing.assert_close(output.hr.cpu(), model.cpu()(lr[:2]).hr, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("name", available_models(trainable=True))
def test_a_few_steps_through_the_one_trainer(name, physics_c, dataset_c, tmp_path):
    """Every trainable method trains through train_method (generator and, for adversarial
    methods, discriminator steps): finite history and every trainable parameter updated."""
    lr, target = dataset_c
    windows = Windows(lr.numpy(), target.numpy(), np.arange(len(lr)), np.full(len(lr), 2))
    spec = MethodSpec(name, name, "", dict(method_class(name).smoke_params),
                      TrainBudget(epochs=2, windows_per_epoch=None, batch=4, lr=1e-3, weight_decay=0.0))
    trainer = TrainerConfig(device="cpu", seeds=(0,), mixed_precision=False, eval_batch=8, threads=0, val_windows=None)
    torch.manual_seed(0)
    before = {key: value.clone() for key, value in smoke(name, physics_c).state_dict().items()}
    result = train_method(spec, trainer, physics_c, windows, lambda model: 0.0, tmp_path / "c.pt",
                          torch.device("cpu"), progress=False)
    assert len(result.history) == 2 and all(np.isfinite(row["train_loss"]) for row in result.history)
    model = smoke(name, physics_c)
    trained = {key for key, p in model.named_parameters() if p.requires_grad}  # frozen ones (a perceptual VGG) excluded
    changed = {key for key in trained if not torch.equal(before[key], result.best_state[key])}
    assert changed == trained, f"parameters never updated: {sorted(trained - changed)}"


def test_loss_rejects_shape_mismatch(physics, dataset):
    lr, target = dataset
    model = get_model("srcnn", physics)
    output = model(lr[:2])
    with pytest.raises(ValueError, match="does not match"):
        model.loss(output, target[:2].reshape(2, -1))
    with pytest.raises(ValueError, match="does not match"):
        model.loss(output, target[:1])


# ------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name, per_phase", [("ista_net", 19_010), ("ista_net_plus", 37_442)])
def test_unfolded_parameter_counts(name, per_phase, physics):
    model = get_model(name, physics)
    assert len(model.phases) == 9
    for phase in model.phases:
        assert sum(p.numel() for p in phase.parameters()) == per_phase
    assert sum(p.numel() for p in model.parameters()) == 9 * per_phase


def test_srcnn_parameter_count(physics):
    model = get_model("srcnn", physics)
    assert sum(p.numel() for p in model.parameters()) == 15_841


# ------------------------------------------------------------------------------ loss weights


def test_unfolded_faithful_loss_weights(physics):
    torch.manual_seed(3)
    target = torch.rand(2, GRID.hr_size, GRID.hr_size) * 250
    output = MethodOutput(hr=target + torch.randn_like(target),
                          extras={"sym": [torch.randn(2, 1, GRID.hr_size, GRID.hr_size) * s
                                          for s in (1.0, 2.0, 3.0)]})
    mse = torch.mean((output.hr - target) ** 2)
    sym = sum(torch.mean(s ** 2) for s in output.extras["sym"])
    for name in ("ista_net", "ista_net_plus"):
        nominal, parts = get_model(name, physics, phases=1).loss(output, target)
        faithful, _ = get_model(name, physics, phases=1, faithful_loss_weights=True).loss(
            output, target)
        torch.testing.assert_close(nominal, mse + 0.01 * sym)
        torch.testing.assert_close(faithful, 2 * mse + 1.01 * sym)
        assert parts["mse"] == pytest.approx(mse.item(), rel=1e-6)
        assert parts["sym"] == pytest.approx(sym.item(), rel=1e-6)


def test_srcnn_faithful_loss_doubles(physics):
    torch.manual_seed(4)
    target = torch.rand(2, GRID.hr_size, GRID.hr_size) * 250
    output = MethodOutput(hr=target + torch.randn_like(target))
    nominal, _ = get_model("srcnn", physics).loss(output, target)
    faithful, _ = get_model("srcnn", physics, faithful_loss_weights=True).loss(output, target)
    torch.testing.assert_close(nominal, torch.mean((output.hr - target) ** 2))
    torch.testing.assert_close(faithful, 2 * nominal)


# ------------------------------------------------------------------------------ classic ISTA


def test_ista_recovers_two_separated_targets(physics, phi):
    truth = [(10, 10, 240.0), (22, 22, 230.0)]  # HR cells (row, col) = LR pixels (3, 3), (7, 7)
    hr = np.zeros((GRID.hr_size, GRID.hr_size))
    for row, col, brightness in truth:
        hr[row, col] = brightness
    lr = as_windows(hr.reshape(1, -1) @ phi.T)
    model = get_model("ista", physics)
    assert not model.trainable and not list(model.parameters())
    estimate = model(lr).hr[0].numpy()
    detections = np.argwhere(estimate >= 70)
    assert len(detections) > 0
    for cell in detections:  # every detection sits near a true target
        assert min(np.abs(cell - (row, col)).max() for row, col, _ in truth) <= 1
    brightest = np.unravel_index(estimate.argmax(), estimate.shape)
    assert min(max(abs(brightest[0] - row), abs(brightest[1] - col)) for row, col, _ in truth) <= 1


def test_ista_batched_equals_one_by_one(physics, dataset):
    lr, _ = dataset
    lr = lr[:4].double()
    model = get_model("ista", copy.deepcopy(physics), iterations=400, tol=0.5).to(torch.float64)
    batched = model(lr)
    steps = batched.extras["iterations"]
    assert len(set(steps.tolist())) > 1, "frames should converge at different iterations"
    for index in range(lr.shape[0]):
        single = model(lr[index:index + 1])
        torch.testing.assert_close(batched.hr[index], single.hr[0], rtol=1e-9, atol=1e-9)
        assert single.extras["iterations"].item() == steps[index].item()


def test_ista_faithful_returns_previous_iterate(physics, dataset):
    lr, _ = dataset
    lr = lr[:4].double()
    own = copy.deepcopy(physics)  # .to(float64) converts the physics submodule in place: not the shared one
    fixed = get_model("ista", own, iterations=400, tol=0.5).to(torch.float64)(lr)
    faithful = get_model("ista", own, iterations=400, tol=0.5,
                         faithful_return_previous=True).to(torch.float64)(lr)
    converged = fixed.extras["iterations"] < 400
    assert converged.any()
    torch.testing.assert_close(fixed.extras["iterations"], faithful.extras["iterations"])
    step = torch.linalg.vector_norm((fixed.hr - faithful.hr).flatten(1), dim=1)
    assert torch.all(step[converged] > 0) and torch.all(step[converged] < 0.5)
    assert torch.all(step[~converged] == 0)


def test_base_class_contract():
    with pytest.raises(TypeError, match="PhysicsOperator"):
        UnmixingMethod(np.zeros((GRID.n_lr, GRID.n_hr)))
    assert UnmixingMethod.trainable and UnmixingMethod.window == 1


@pytest.mark.parametrize("name", available_models(trainable=True))
def test_a_bf16_autocast_step_runs_on_cpu(name, physics, dataset):
    """The trainer's mixed precision (bf16 autocast, enabled on CUDA) exercised on CPU: forward,
    loss and backward under ``torch.autocast`` give a finite loss, float32 weights and finite
    gradients, so dtype mixing in a method is caught without a GPU."""
    lr, target = dataset
    torch.manual_seed(0)
    model = smoke(name, copy.deepcopy(physics))
    assert model.physics.phi.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(lr[:4])
        loss, _ = model.loss(output, target[:4])
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.generator_parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in model.generator_parameters())
    assert any(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads if g is not None)
