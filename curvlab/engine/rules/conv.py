"""The rule for ``nn.Conv1d`` and ``nn.Conv2d`` (zero padding, any stride and dilation, groups = 1).

With the input unfolded into patches X_n [J, L] (J = C_in · kernel size, L output positions;
``torch.nn.functional.unfold``) the layer is y_n = W X_n + b 1ᵀ, W [O, J]. Per sample and column:

* input side:      Jᵀ V by the transposed convolution (``torch.nn.grad.conv{1,2}d_input``);
  Hessians Jᵀ H J by applying it to both sides (linear: no residual), cost O(N · Do · conv).
* parameter side:  Jθᵀ V_nk = (V_nk X_nᵀ, V_nk 1)  — diagonal and blocks are exact from these.
* Hessian block:   Σ_n Jθᵀ H_n Jθ from the [N, Do, Do] per-sample output Hessians (Jθ applied twice):
  memory N · Do · P_layer, exact.
* Kronecker (KFC, Grosse & Martens 2016; the "expand" convention of Eschenhagen et al. 2023, as in
  curvlinops): A = Σ_n Σ_l x̃_nl x̃_nlᵀ / (N·L) (averaged over samples and positions),
  G = Σ_nkl V_nkl V_nklᵀ (summed over positions); KFRA's G = Σ_l Ḡ[(·,l), (·,l)]. Under KFC's spatially
  uncorrelated derivatives, G ⊗ A = Σ_l E[x xᵀ] ⊗ E[g gᵀ]. Bias "augmented" as for Linear. These are
  approximations even at N = 1 (they ignore correlations across positions).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.collector.adapters.conv import sample_weight_gradients
from curvlab.engine.rules.base import ParameterRule, Record
from curvlab.errors import UnsupportedModuleError

__all__ = ["ConvRule"]


def _as_2d(module: nn.Module) -> dict:
    """Unfold arguments for a Conv1d (as a height-1 Conv2d) or Conv2d."""
    if isinstance(module, nn.Conv1d):
        return {
            "kernel_size": (1, module.kernel_size[0]),
            "dilation": (1, module.dilation[0]),
            "padding": (0, module.padding[0]),
            "stride": (1, module.stride[0]),
        }
    return {k: getattr(module, k) for k in ("kernel_size", "dilation", "padding", "stride")}


class ConvRule(ParameterRule):
    """``nn.Conv1d``/``nn.Conv2d`` (see the module docstring)."""

    has_kronecker = True

    def check(self, name: str, module: nn.Module) -> None:
        super().check(name, module)
        problems = []
        if module.groups != 1:
            problems.append(f"groups={module.groups}")
        if module.padding_mode != "zeros":
            problems.append(f"padding_mode={module.padding_mode!r}")
        if isinstance(module.padding, str):
            problems.append(f"padding={module.padding!r} (give integers)")
        if problems:
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) uses {', '.join(problems)}, which is not supported"
            )

    def kronecker_supported(self, module: nn.Module) -> bool:
        return module.weight.requires_grad

    def _patches(self, record: Record) -> torch.Tensor:
        """X [N, J, L] (plus a row of ones if the bias is trainable, when ``augmented``)."""
        if "patches" not in record.cache:
            x = record.inputs.unsqueeze(2) if isinstance(record.module, nn.Conv1d) else record.inputs
            record.cache["patches"] = F.unfold(x, **_as_2d(record.module))
        return record.cache["patches"]

    def _augmented(self, record: Record) -> torch.Tensor:
        x = self._patches(record)
        if "bias" in self.trainable(record.module):
            x = torch.cat([x, x.new_ones(x.shape[0], 1, x.shape[2])], dim=1)
        return x

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        m = record.module
        num, cols = factor.shape[:2]
        grad_input = torch.nn.grad.conv1d_input if isinstance(m, nn.Conv1d) else torch.nn.grad.conv2d_input
        size = (num * cols, *record.in_shape)
        result = grad_input(size, m.weight.detach(), factor.flatten(0, 1), m.stride, m.padding, m.dilation, 1)
        return result.reshape(num, cols, *record.in_shape)

    def param_factor(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        flat = factor.flatten(3) if factor.ndim > 4 else factor  # [N, K, O, L]
        parts = []
        names = self.trainable(record.module)
        if "weight" in names:
            parts.append(sample_weight_gradients(record.inputs, factor, record.module, record.module.padding).flatten(2))
        if "bias" in names:
            parts.append(flat.sum(-1))
        return torch.cat(parts, dim=2)

    def kron_input(self, record: Record) -> tuple[torch.Tensor, int]:
        x = self._augmented(record)
        return torch.einsum("njl,nil->ji", x, x) / x.shape[-1], x.shape[0]

    def kron_output(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        flat = factor.flatten(3) if factor.ndim > 4 else factor
        return torch.einsum("nkol,nkpl->op", flat, flat)

    def kfra_output(self, gbar: torch.Tensor, record: Record) -> torch.Tensor:
        out = record.outputs.shape[1]
        blocks = gbar.reshape(out, -1, out, gbar.shape[0] // out)
        return blocks.diagonal(dim1=1, dim2=3).sum(-1)

    input_independent_jacobian = True

    def ekfac_scale(self, record, factor, basis_in, basis_out):
        flat = factor.flatten(3) if factor.ndim > 4 else factor
        rotated_out = torch.einsum("nkol,oa->nkal", flat, basis_out)
        rotated_in = torch.einsum("njl,jb->nbl", self._augmented(record), basis_in)
        return torch.einsum("nkal,nbl->nkab", rotated_out, rotated_in).pow(2).sum((0, 1))
