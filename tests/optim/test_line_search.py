import pytest

from curvlab.optim.hyperparameters import HyperparameterError
from curvlab.optim.line_search import backtracking_armijo


def test_accepts_first_step_when_armijo_holds():
    calls = []

    def f(t):
        calls.append(t)
        return 1.0 - t

    res = backtracking_armijo(f, 1.0, -1.0)
    assert (res.step, res.tries, res.accepted, calls) == (1.0, 1, True, [1.0])


def test_backtracks_by_half_and_skips_nan():
    res = backtracking_armijo(lambda t: float("nan") if t > 0.3 else (1 - 4 * t) ** 2, 1.0, -8.0)
    assert res.step == 0.25 and res.tries == 3 and res.accepted


def test_gives_up_after_max_tries():
    res = backtracking_armijo(lambda t: 2.0, 1.0, -1.0, max_tries=10)
    assert not res.accepted and res.tries == 10 and res.step == pytest.approx(0.5**9)


@pytest.mark.parametrize("kw", [{"c": 1.0}, {"shrink": 1.0}, {"max_tries": 0}, {"initial_step": 0.0}])
def test_bad_constants(kw):
    with pytest.raises(HyperparameterError, match=next(iter(kw))):
        backtracking_armijo(lambda t: 0.0, 1.0, -1.0, **kw)
