import torch

from curvlab import reference
from curvlab.optim.gauss_newton import GaussNewtonQuadratic


def test_matches_reference(case):
    model, loss_fn, x, y = case.build(batch_size=4)
    quad = GaussNewtonQuadratic(model, loss_fn, x, y)
    G = reference.ggn(model, loss_fn, x, y)
    torch.testing.assert_close(quad.gradient, reference.gradient(model, loss_fn, x, y))
    torch.testing.assert_close(quad.loss, loss_fn(model(x), y).detach())
    v = torch.randn(G.shape[0], dtype=torch.float64)
    torch.testing.assert_close(quad.ggn_matvec(v), G @ v)
    torch.testing.assert_close(quad.ggn_diagonal(), torch.diagonal(G))
    predicted = quad.gradient @ v + 0.5 * v @ G @ v + 0.5 * 0.3 * v @ v
    torch.testing.assert_close(quad.quadratic(v, damping=0.3), predicted)


def test_does_not_touch_the_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1)).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    quad = GaussNewtonQuadratic(model, torch.nn.MSELoss(), x, y)
    quad.ggn_matvec(torch.ones(quad.num_params, dtype=torch.float64))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())
