"""LayeredSquareRootCurvature: the per-layer factor agrees with its materialised SquareRootCurvature and
answers matvec, diagonal, Gram eigenvalues and Woodbury solves without forming F [R, P]."""

from __future__ import annotations

import pytest
import torch

from curvlab.errors import MemoryBudgetError, NonFiniteError
from curvlab.guards import memory_budget
from curvlab.repr import LayeredSquareRootCurvature, LayerFactor, SquareRootCurvature
from tests.repr.factories import build

F64 = torch.float64


@pytest.fixture
def pair():
    rep, _ = build("layered_square_root")
    return rep, SquareRootCurvature(rep.factor, rep.partition, quantity="ggn")


def test_routes_agree_with_the_materialised_factor(pair):
    rep, plain = pair
    torch.manual_seed(0)
    v = torch.randn(15, 3, dtype=F64)
    torch.testing.assert_close(rep.matvec(v), plain.matvec(v))
    torch.testing.assert_close(rep._gram(), plain._gram())
    torch.testing.assert_close(rep.eigvalsh(), plain.eigvalsh())
    torch.testing.assert_close(rep.solve(v, 0.3), plain.solve(v, 0.3))
    torch.testing.assert_close(rep.block("0", "3"), plain.block("0", "3"))


def test_no_route_but_factor_and_dense_forms_the_factor(pair):
    rep, plain = pair
    v = torch.ones(15, dtype=F64)
    with memory_budget(6 * 14 * 8):  # F is [6, 15]: one column short
        torch.testing.assert_close(rep.matvec(v), plain.matvec(v))
        torch.testing.assert_close(rep.diagonal(), plain.diagonal())
        torch.testing.assert_close(rep.trace(), plain.trace())
        torch.testing.assert_close(rep.eigvalsh(), plain.eigvalsh())
        torch.testing.assert_close(rep.solve(v, 1.0), plain.solve(v, 1.0))
        with pytest.raises(MemoryBudgetError, match="ggn square-root factor"):
            _ = rep.factor


def test_constructor_errors(pair):
    rep, _ = pair
    first, middle, last = rep.layers
    with pytest.raises(ValueError, match=r"layers\[1\] starts at column 7, expected 8"):
        LayeredSquareRootCurvature([first, LayerFactor(7, middle.outputs), last], rep.partition, quantity="ggn")
    with pytest.raises(ValueError, match="cover 12 columns but the partition has 15"):
        LayeredSquareRootCurvature([first, middle], rep.partition, quantity="ggn")
    odd = LayerFactor(0, first.outputs, first.inputs[:4].repeat(2, 1)[:4], bias=True)  # 6 rows, 4 samples
    with pytest.raises(ValueError, match="6 factor rows are not a multiple of the 4 input samples"):
        LayeredSquareRootCurvature([odd, middle, last], rep.partition, quantity="ggn")
    with pytest.raises(ValueError, match="bias=True needs inputs"):
        LayeredSquareRootCurvature([first, LayerFactor(8, middle.outputs, bias=True), last], rep.partition,
                                   quantity="ggn")
    bad = last.outputs.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layers\[2\].outputs"):
        LayeredSquareRootCurvature([first, middle, LayerFactor(12, bad, last.inputs, bias=True)], rep.partition,
                                   quantity="ggn")
    with pytest.raises(TypeError, match="non-empty sequence of LayerFactor"):
        LayeredSquareRootCurvature([], rep.partition, quantity="ggn")
