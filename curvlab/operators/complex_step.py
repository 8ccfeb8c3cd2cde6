"""Hessian-vector products by complex-step differentiation of the gradient (McAllester 2017).

For a loss L analytic in θ, the gradient's holomorphic extension satisfies
∇L(θ + iεv) = ∇L(θ) + iε H v + O(ε²), so

    H v = Im ∇L(θ + iεv) / ε,      ε = 2⁻⁵⁰.

Real and imaginary parts are separate floating-point numbers and the ε² terms fall below the precision
of the real parts, so there is no cancellation (unlike finite differences): the result agrees with
double backward to about machine precision. Division by ε = 2⁻⁵⁰ only shifts the exponent.

Implementation: the model runs on complex parameters θ + iεv (float64 → complex128) and complex inputs.
Convolutions, average pooling and eval-mode batch norm are computed from real calls or explicit formulas
(:mod:`curvlab.operators.complex_ops`; PyTorch's complex convolution cancels an imaginary part this
small). The loss is evaluated with analytic formulas (log-sum-exp, softplus written with analytic
pieces). Reverse-mode autograd of Re L gives conj(∇L(θ + iεv)) (PyTorch's convention for complex
inputs), so H v = −Im(autograd) / ε. One product costs one complex forward and backward (about 4 real
gradients in flops).

Only analytic operations qualify: modules with kinks (ReLU, max-pooling, Hardtanh, ...), random ones
(dropout in training), and normalisations that use |z|² are refused with
:class:`~curvlab.errors.UnsupportedModuleError` naming each module; an op without a complex kernel met at
run time is reported with the name of the module running it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from curvlab.data import Data
from curvlab.errors import UnsupportedModuleError
from curvlab.losses import LossAdapter
from curvlab.losses.elementary import elementary_loss
from curvlab.operators.cg import DEFAULT_CG, CGSettings
from curvlab.operators.complex_ops import exact_complex_ops
from curvlab.operators.model_operator import ModelCurvatureOperator
from curvlab.partition import Partition, PartitionSpec

__all__ = ["ComplexStepHessianOperator", "check_analytic"]

EPSILON = 2.0**-50

_KINK = "piecewise definition with a kink, not analytic"
_REFUSED: tuple[tuple[tuple[type, ...], str], ...] = (
    (
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.PReLU,
            nn.RReLU,
            nn.ELU,
            nn.SELU,
            nn.CELU,
            nn.Hardtanh,
            nn.Hardsigmoid,
            nn.Hardswish,
            nn.Hardshrink,
            nn.Softshrink,
            nn.Threshold,
        ),
        _KINK,
    ),
    (
        (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
            nn.FractionalMaxPool2d,
            nn.FractionalMaxPool3d,
        ),
        "max is not analytic",
    ),
    ((nn.Softsign, nn.modules.pooling._LPPoolNd), "uses |x|, not analytic"),
    (
        (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm),
        "variance of complex values uses |z|²",
    ),
    (
        (
            nn.GELU,
            nn.Softplus,
            nn.Mish,
        ),
        "analytic, but PyTorch has no complex kernel for it",
    ),
)


def _refusal(module: nn.Module) -> str | None:
    for types, reason in _REFUSED:
        if isinstance(module, types):
            return reason
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
        module.training or not module.track_running_stats
    ):
        return (
            "batch statistics use |z|² for complex values; call model.eval() (running statistics)"
        )
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
        return "random in training mode; call model.eval()"
    return None


def check_analytic(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModuleError` naming every module that is not analytic (see module docstring).

    Example:
        >>> check_analytic(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
        >>> check_analytic(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedModuleError: complex-step differentiation needs analytic operations; \
refused: '1' (ReLU: piecewise definition with a kink, not analytic)
    """
    bad = [
        f"{name or '<root>'!r} ({type(m).__name__}: {reason})"
        for name, m in model.named_modules()
        if (reason := _refusal(m)) is not None
    ]
    if bad:
        raise UnsupportedModuleError(
            f"complex-step differentiation needs analytic operations; refused: {', '.join(bad)}"
        )


@contextlib.contextmanager
def _module_tracker(model: nn.Module):
    """Record the stack of modules being run (forward hooks, always removed) to name the culprit of an error."""
    stack: list[str] = []
    handles = []

    def enter(label: str):
        def hook(*_):
            stack.append(label)

        return hook

    def leave(*_):
        stack.pop()

    for name, module in model.named_modules():
        label = f"{name or '<root>'!r} ({type(module).__name__})"
        handles.append(module.register_forward_pre_hook(enter(label)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


class ComplexStepHessianOperator(ModelCurvatureOperator):
    """H v = Im ∇L(θ + iεv) / ε with ε = 2⁻⁵⁰, for models made of analytic operations.

    Args:
        model, loss_fn, data, partition, cg: as for :class:`~curvlab.operators.HessianOperator`.
        epsilon: the step ε (default 2⁻⁵⁰, meant for float64 parameters).

    Raises:
        UnsupportedModuleError: naming every non-analytic module (ReLU, MaxPool2d, ...), at construction.

    Example:
        >>> from curvlab.operators import HessianOperator
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)).double()
        >>> data = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
        >>> v = torch.randn(26, dtype=torch.float64)
        >>> cs = ComplexStepHessianOperator(model, nn.CrossEntropyLoss(), data) @ v
        >>> bool((cs - HessianOperator(model, nn.CrossEntropyLoss(), data) @ v).abs().max() < 1e-12)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | LossAdapter,
        data: Data,
        *,
        epsilon: float = EPSILON,
        partition: PartitionSpec | Partition = "canonical",
        cg: CGSettings = DEFAULT_CG,
    ):
        check_analytic(model)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        self.epsilon = float(epsilon)
        super().__init__(
            model,
            loss_fn,
            data,
            quantity="hessian",
            partition=partition,
            cg=cg,
            epsilon=self.epsilon,
        )
        elementary_loss(
            self.loss, self.outputs[0], self.batches[0][1]
        )  # refuse unsupported losses now
        self._complex_dtype = (torch.ones((), dtype=self.dtype) * 1j).dtype

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        vs = self.unflatten(v)
        total = torch.zeros_like(v)
        for b, (x, y) in enumerate(self.batches):
            with torch.enable_grad():
                zs = tuple(
                    (p + (1j * self.epsilon) * u).requires_grad_()
                    for p, u in zip(self.params, vs, strict=False)
                )
                inputs = x.to(self._complex_dtype) if x.is_floating_point() else x
                with _module_tracker(self.model) as running, exact_complex_ops():
                    try:
                        outputs = self.forward(zs, inputs)
                    except (RuntimeError, NotImplementedError, TypeError) as err:
                        where = running[-1] if running else type(self.model).__name__
                        raise UnsupportedModuleError(
                            f"complex-step forward failed in module {where}: {err}"
                        ) from err
                loss = self.weights[b] * elementary_loss(self.loss, outputs, y)
                grads = torch.autograd.grad(
                    loss.real, zs, allow_unused=True, materialize_grads=True
                )
            total += -self.flatten(grads).imag / self.epsilon
        return total
