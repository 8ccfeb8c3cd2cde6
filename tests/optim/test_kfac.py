import math

import pytest
import torch
from torch import nn

import curvlab
from curvlab import reference
from curvlab.optim import KFAC, HyperparameterError
from curvlab.partition import Partition


def _mlp(loss_fn=None, n=6, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (n,)) if isinstance(loss_fn, nn.CrossEntropyLoss) else torch.randn(n, 2, dtype=torch.float64)
    return model, loss_fn or nn.MSELoss(), x, y


@pytest.mark.parametrize("mode, damping, tol", [("exact", 1e-9, 1e-7), ("factored", 1e-11, 1e-4)])
@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.CrossEntropyLoss()], ids=["mse", "ce"])
def test_kflr_at_batch_size_one_takes_exact_block_diagonal_ggn_newton_step(loss_fn, mode, damping, tol):
    """At N = 1 each layer's GGN block is exactly G ⊗ A (rank-deficient); tiny damping gives the
    pseudo-inverse (Newton) step. Factored damping perturbs it by O(√γ), hence the looser tolerance."""
    model, loss_fn, x, y = _mlp(loss_fn, n=1)
    G = reference.ggn(model, loss_fn, x, y)
    g = reference.gradient(model, loss_fn, x, y)
    theta = reference.flat_parameters(model)
    expected = theta.clone()
    for group in Partition.from_model(model, "layer").groups:
        idx = group.indices
        block = G[idx][:, idx]
        expected[idx] -= torch.linalg.pinv(block, hermitian=True, rtol=1e-10) @ g[idx]
    opt = KFAC(model, loss_fn, curvature="kflr", damping=damping, damping_mode=mode, ema_decay=0.0,
               step_rescaling="none", lr=1.0, adaptive_damping=False)
    opt.step(x, y)
    torch.testing.assert_close(reference.flat_parameters(model), expected, rtol=tol, atol=tol)


def test_factored_tikhonov_with_pi_and_quadratic_rescaling():
    model, loss_fn, x, y = _mlp()
    gamma = 0.05
    kflr = curvlab.compute(model, loss_fn, (x, y), ["kflr"], progress=False)["kflr"]
    g = reference.gradient(model, loss_fn, x, y)
    G = reference.ggn(model, loss_fn, x, y)
    theta = reference.flat_parameters(model)
    d = torch.empty_like(g)
    pis = []
    for group in Partition.from_model(model, "layer").groups:
        factors = kflr.layers[group.name]
        A, Gf = factors.A, factors.G
        pi = math.sqrt((A.trace() / A.shape[0]) / (Gf.trace() / Gf.shape[0]))
        pis.append(pi)
        eye_a, eye_g = torch.eye(A.shape[0], dtype=A.dtype), torch.eye(Gf.shape[0], dtype=A.dtype)
        # Martens & Grosse §6.3: (A + π√γ I) ⊗ (G + √γ/π I); the Kronecker ordering is G-major
        damped = torch.kron(Gf + math.sqrt(gamma) / pi * eye_g, A + pi * math.sqrt(gamma) * eye_a)
        # Kronecker ordering vec([W, b]) row-major -> reference ordering (W.flatten(), b)
        v = factors.to_matrix(g[group.indices]).reshape(-1)
        d[group.indices] = factors.from_matrix(torch.linalg.solve(damped, v).reshape(factors.matrix_shape))
    alpha = min(1.0, float(g @ d / (d @ G @ d + gamma * d @ d)))
    opt = KFAC(model, loss_fn, curvature="kflr", damping=gamma, ema_decay=0.0, lr=0.8,
               step_rescaling="quadratic", adaptive_damping=False)
    opt.step(x, y)
    stats = opt.statistics()
    assert stats["step_scale"] == pytest.approx(alpha)
    torch.testing.assert_close(stats["pi"], torch.tensor(pis, dtype=stats["pi"].dtype))
    torch.testing.assert_close(reference.flat_parameters(model), theta - 0.8 * alpha * d)


def test_ema_of_factors_and_update_periods():
    model, loss_fn, x, y = _mlp(n=8)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    opt = KFAC(model, loss_fn, curvature="kflr", ema_decay=0.75, stats_period=2, inverse_period=3,
               step_rescaling="none", lr=1e-3, adaptive_damping=False)
    flags, expected = [], None
    for step in range(6):
        batch = batches[step % 2]
        if step % 2 == 0:
            new = curvlab.compute(model, loss_fn, batch, ["kflr"], progress=False)["kflr"].layers["2"].A
            expected = new if expected is None else 0.75 * expected + 0.25 * new
        opt.step(*batch)
        stats = opt.statistics()
        flags.append((stats["stats_updated"], stats["inverses_updated"]))
        torch.testing.assert_close(opt.global_state["factors"]["2"]["A"], expected.to(torch.float64))
    assert flags == [(1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0)]


def test_kl_clip_scale():
    model, loss_fn, x, y = _mlp(nn.CrossEntropyLoss())
    opt = KFAC(model, loss_fn, curvature="kfac", step_rescaling="kl-clip", kl_clip=1e-4, lr=0.5,
               damping=1e-2, mc_samples=4, adaptive_damping=False)
    g = reference.gradient(model, loss_fn, x, y)
    theta = reference.flat_parameters(model)
    opt.step(x, y)
    d = (theta - reference.flat_parameters(model)) / (0.5 * opt.statistics()["step_scale"])
    expected = min(1.0, math.sqrt(1e-4 / (0.25 * float(g @ d))))
    assert opt.statistics()["step_scale"] == pytest.approx(expected)
    assert expected < 1.0


@pytest.mark.parametrize(
    "kw, name",
    [({"curvature": "kfc"}, "curvature"), ({"damping_mode": "tikhonov"}, "damping_mode"), ({"damping": 0.0}, "damping"), ({"ema_decay": 1.0}, "ema_decay"),
     ({"stats_period": 0}, "stats_period"), ({"inverse_period": 1.5}, "inverse_period"),
     ({"step_rescaling": "clip"}, "step_rescaling"), ({"kl_clip": -1.0}, "kl_clip"), ({"seed": -1}, "seed")],
)
def test_bad_hyperparameters(kw, name):
    model, loss_fn, _, _ = _mlp()
    with pytest.raises(HyperparameterError, match=name):
        KFAC(model, loss_fn, **kw)


@pytest.mark.parametrize("curvature", ["kflr", "ekfac"])
def test_decreases_loss_on_shared_sequential_cases(sequential_case, curvature):
    model, loss_fn, x, y = sequential_case.build(batch_size=16)
    opt = KFAC(model, loss_fn, curvature=curvature, damping=1e-2)
    losses = [float(opt.step(x, y)) for _ in range(6)]
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert final < losses[0], (sequential_case.name, losses, final)


def test_factored_damping_puts_pi_on_the_input_factor_hand_derived_2x2():
    """nn.Linear(1, 1) with bias: A = E[[x;1][x;1]ᵀ] is 2×2, G = E[(∂ℓ/∂a)²] is 1×1 (MSE on one output: G = 2).

    x = (1, 3), y = 0, W = b = 0 → a = 0:  A = [[5, 2], [2, 1]], tr A / 2 = 3, G = [[2]] → π = sqrt(3/2).
    With γ = 0.25 (√γ = ½) Martens & Grosse §6.3 damp as (A + π/2 I) ⊗ (G + 1/(2π)): the solve is
    d = (A + π/2 I)⁻¹ g / (2 + 1/(2π)), g = ∇L = E[2 a [x; 1]] = 0 → use a non-zero target y = (1, 1):
    g = (−2·(1+3)/2, −2) = (−4, −2) over (W, b).
    """
    model = nn.Sequential(nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    x = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    y = torch.ones(2, 1, dtype=torch.float64)
    pi = math.sqrt(3.0 / 2.0)
    A = torch.tensor([[5.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    g = torch.tensor([-4.0, -2.0], dtype=torch.float64)
    d = torch.linalg.solve(A + (pi / 2) * torch.eye(2, dtype=torch.float64), g) / (2.0 + 1.0 / (2 * pi))
    wrong = torch.linalg.solve(A + 1 / (2 * pi) * torch.eye(2, dtype=torch.float64), g) / (2.0 + pi / 2)
    assert not torch.allclose(d, wrong, rtol=1e-3)
    opt = KFAC(model, nn.MSELoss(), curvature="kflr", damping=0.25, ema_decay=0.0, step_rescaling="none",
               adaptive_damping=False, lr=1.0)
    opt.step(x, y)
    assert opt.statistics()["pi"].tolist() == pytest.approx([pi])
    torch.testing.assert_close(reference.flat_parameters(model), -d, rtol=1e-10, atol=1e-12)


def test_quadratic_momentum_step_minimises_the_two_dimensional_model():
    """(α, μ) solve the normal equations of m(αu + μv) = gᵀ(αu + μv) + ½ (αu + μv)ᵀ(G + γI)(αu + μv), and no
    perturbation of them does better (float64, a random PSD G)."""
    from curvlab.optim.step_scaling import quadratic_momentum_step

    g_ = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g_, dtype=torch.float64)
    G, grad = a @ a.T, torch.randn(6, generator=g_, dtype=torch.float64)
    u, v = torch.randn(2, 6, generator=g_, dtype=torch.float64)
    gamma = 0.3
    vectors = torch.stack([u, v])
    alpha, mu = quadratic_momentum_step(vectors @ G @ vectors.T, vectors @ grad, gamma, vectors @ vectors.T)

    def model(al, m):
        step = al * u + m * v
        return float(grad @ step + 0.5 * step @ (G + gamma * torch.eye(6, dtype=torch.float64)) @ step)

    best = model(alpha, mu)
    for da, dm in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3), (1e-3, 1e-3)]:
        assert model(alpha + da, mu + dm) > best
    singular = torch.ones(2, 2, dtype=torch.float64)
    assert all(map(math.isnan, quadratic_momentum_step(singular, torch.ones(2, dtype=torch.float64), 0.0, singular)))


def test_kfac_quadratic_momentum_uses_the_previous_update():
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.randn(64, 3, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    opt = KFAC(model, nn.MSELoss(), step_rescaling="quadratic-momentum")
    losses = [float(opt.step(x, y)) for _ in range(15)]
    assert "last_update" in opt.global_state and losses[-1] < 0.2 * losses[0]
