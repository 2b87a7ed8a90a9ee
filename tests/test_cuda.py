"""CUDA paths, run only where a GPU is usable (collected and skipped elsewhere): the deformable
convolution of torchvision's CUDA kernel against the project's CPU path, a bf16 training step
that keeps its loss in fp32, an interrupted GPU run resumed, and the synchronised network FPS."""
import dataclasses

import numpy as np
import pytest
import torch

from physics_helpers import on_grid_windows
from pipeline.evaluation import network_fps
from pipeline.methods import get_model
from pipeline.methods.blocks.deformable import sampled_deform_conv2d
from pipeline.method_specs import MethodSpec
from pipeline.settings import TrainBudget, TrainerConfig
from pipeline.training import train_method

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no usable CUDA device")
CUDA = torch.device("cuda")
TRAINER = TrainerConfig(device="cuda", seeds=(0,), mixed_precision=False, eval_batch=64, threads=0,
                        val_windows=None)


def _spec(epochs: int = 2) -> MethodSpec:
    return MethodSpec("srcnn", "srcnn", "srcnn.py", {}, TrainBudget(epochs, None, 16, 1e-3, 0.0))


def _validate(model) -> float:
    return -float(sum(p.detach().abs().sum() for p in model.parameters()))


def test_torchvision_cuda_deformable_convolution_matches_the_cpu_path():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(1)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    offsets = (1.5 * torch.randn(2, 18, 9, 9, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(4, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    ours = sampled_deform_conv2d(x, offsets, weight)
    theirs = deform_conv2d(x.to(CUDA), offsets.to(CUDA), weight.to(CUDA), padding=1)
    torch.testing.assert_close(ours, theirs.cpu())
    probe = torch.randn_like(ours)
    for mine, gpu in zip(torch.autograd.grad((ours * probe).sum(), (x, offsets, weight)),
                         torch.autograd.grad((theirs * probe.to(CUDA)).sum(), (x, offsets, weight))):
        torch.testing.assert_close(mine, gpu.cpu())


def test_a_bf16_training_step_keeps_the_loss_in_fp32(tmp_path):
    physics, windows = on_grid_windows()
    trainer = dataclasses.replace(TRAINER, mixed_precision=True)
    result = train_method(_spec(1), trainer, physics.to(CUDA), windows, _validate, tmp_path / "bf16.pt", CUDA,
                          progress=False)
    assert np.isfinite(result.history[0]["train_loss"])
    model = get_model("srcnn", physics.to(CUDA)).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(torch.from_numpy(windows.lr[:4]).to(CUDA))
    assert output.hr.dtype == torch.bfloat16  # the forward pass runs in bf16; the trainer casts it back


def test_an_interrupted_gpu_run_resumes_close_to_an_uninterrupted_one(tmp_path):
    physics, windows = on_grid_windows()
    physics = physics.to(CUDA)
    straight = train_method(_spec(3), TRAINER, physics, windows, _validate, tmp_path / "a.pt", CUDA, progress=False)
    train_method(_spec(3), TRAINER, physics, windows, _validate, tmp_path / "b.pt", CUDA, progress=False,
                 after_epoch=lambda history: True)
    resumed = train_method(_spec(3), TRAINER, physics, windows, _validate, tmp_path / "b.pt", CUDA, progress=False)
    for key, value in straight.best_state.items():  # GPU kernels need not be bitwise deterministic
        torch.testing.assert_close(value, resumed.best_state[key], rtol=1e-4, atol=1e-5)


def test_network_fps_is_synchronised_and_positive():
    physics, windows = on_grid_windows()
    model = get_model("srcnn", physics.to(CUDA)).to(CUDA)
    assert network_fps(model, windows.lr, 16, CUDA) > 0
