"""Issue 13, "Build 1": each defect with a test that failed before the fix.

* float32 KFAC / EKFAC (factors and eigendecompositions in float64, eigenvalues clamped, failures
  guarded): before, KFLR rejected 11–12 of 12 steps on the MNIST MLP below and EKFAC raised
  NonFiniteError ("scaling contains 64 NaN") in every seed;
* the Gauss–Newton products use the loss's structured output-Hessian product, never a dense [N, C, C];
* NewtonSummary at its defaults (cubic term on, safeguard): before, 3.4× the initial loss on the tiny
  regression; with the safeguard a full-batch run never increases the loss.

(π placement: tests/optim/test_kfac.py; ACP's α floor and the exactly fitted batch:
tests/reliability/test_optim_reliability.py.)
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from curvlab import optim, reference
from curvlab.errors import CurvlabWarning
from curvlab.losses import LossAdapter
from curvlab.optim.gauss_newton import GaussNewtonQuadratic
from tests.optim.problems import mnist_mlp, tiny_mlp_regression


@pytest.mark.parametrize("curvature", ["kflr", "ekfac"])
def test_float32_kronecker_steps_are_never_rejected_nor_crash(curvature):
    model, loss_fn, x, y = mnist_mlp(torch.float32)
    torch.manual_seed(0)
    for p in model.parameters():  # large weights: saturated, ill-conditioned factors in float32
        p.data.normal_(0.0, 0.5)
    opt = optim.KFAC(model, loss_fn, curvature=curvature, damping=1e-4, adaptive_damping=False, inverse_period=1)
    with torch.no_grad():
        initial = float(loss_fn(model(x), y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvlabWarning)  # a rejected step warns: fail on it
        for i in range(6):
            start = (64 * i) % len(x)
            opt.step(x[start : start + 64], y[start : start + 64])
            assert opt.statistics()["rejected"] == 0.0, i
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) < initial
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_failed_eigendecomposition_is_a_rejected_step_not_a_crash(monkeypatch):
    model, loss_fn, x, y = tiny_mlp_regression(torch.float64)
    opt = optim.KFAC(model, loss_fn, damping_mode="exact")  # the eigendecomposition route
    before = [p.detach().clone() for p in model.parameters()]

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    with pytest.warns(Warning, match="eigendecomposition"):
        opt.step(x, y)
    assert opt.statistics()["rejected"] == 1.0
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())
    monkeypatch.undo()
    assert torch.isfinite(opt.step(x, y)) and "factors" in opt.global_state


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()],
                         ids=["mse", "ce", "bce"])
def test_ggn_products_never_build_the_dense_output_hessian(loss_fn, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = (torch.randint(0, 5, (7,)) if isinstance(loss_fn, nn.CrossEntropyLoss)
         else torch.rand(7, 5, dtype=torch.float64))
    G = reference.ggn(model, loss_fn, x, y)

    def dense(self, outputs):
        raise AssertionError("the dense [N, C, C] output Hessian was built")

    for cls in LossAdapter.__subclasses__():
        monkeypatch.setattr(cls, "output_hessian", dense)
    quad = GaussNewtonQuadratic(model, loss_fn, x, y)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    torch.testing.assert_close(quad.ggn_matvec(v), G @ v)
    torch.testing.assert_close(quad.curvature_along(v), v @ G @ v)
    torch.testing.assert_close(quad.quadratic(v, damping=0.5), quad.gradient @ v + 0.5 * (v @ G @ v + 0.5 * v @ v))


def test_newton_summary_defaults_decrease_a_full_batch_loss_monotonically():
    model, loss_fn, x, y = tiny_mlp_regression(torch.float64)
    opt = optim.NewtonSummary(model, loss_fn)
    assert opt.param_groups[0]["lambda_int"] > 0 and opt.param_groups[0]["safeguard"]
    losses = [float(opt.step(x, y)) for _ in range(8)]
    with torch.no_grad():
        losses.append(float(loss_fn(model(x), y)))
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_newton_summary_safeguard_backtracks_an_overlong_step():
    """λ = 1e3 makes every summary step far too long: the safeguard halves it until the loss decreases."""
    model, loss_fn, x, y = tiny_mlp_regression(torch.float64)
    opt = optim.NewtonSummary(model, loss_fn, damping=1e3)
    with torch.no_grad():
        initial = float(loss_fn(model(x), y))
    opt.step(x, y)
    with torch.no_grad():
        after = float(loss_fn(model(x), y))
    stats = opt.statistics()
    assert after <= initial
    assert stats["safeguard_tries"] > 1 and (stats["rejected"] == 1.0 or stats["safeguard_scale"] < 1.0)
