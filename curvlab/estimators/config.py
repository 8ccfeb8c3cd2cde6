"""Configuration of the estimators: the layer-to-approximation map and the weight-sharing convention.

``approximations`` maps layer-name patterns (``fnmatch``: ``"fc"``, ``"*norm*"``, ``"layer1.*"``) to
the approximation a Kronecker quantity (``kfac``, ``kflr``, ``ekfac``) uses for the matching layers,
like kfac-jax's tag-to-block mapping. The first matching pattern wins; unmatched layers use the
quantity itself:

=========  ===========================================================================
``kfac``   Kronecker factors with an MC-sampled output factor G
``kflr``   Kronecker factors with the exact GGN output factor G
``block``  the exact block of the quantity's source (MC for ``kfac``, GGN otherwise)
``diag``   the exact diagonal of that source (held as a diagonal block)
=========  ===========================================================================

``weight_sharing`` (Eschenhagen et al. 2023) says how a Kronecker factor treats the S positions that
share a weight (sequence tokens, convolution patches):

* ``"expand"`` (default): positions are extra samples, A = Σ_{n,s} x̃ x̃ᵀ / (N S),
  G = Σ_{n,k,s} g gᵀ. Exact for deep linear networks whose loss treats every position as its own
  sample (token-wise regression / language modelling); KFC for convolutions.
* ``"reduce"``: positions are summed first, A = Σ_n x̄̃ x̄̃ᵀ / N (x̄ the mean over positions),
  G = Σ_{n,k} ĝ ĝᵀ (ĝ the sum over positions). Exact for deep linear networks whose output pools
  over positions (one prediction per sequence: mean pooling then a classifier).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["APPROXIMATIONS", "EstimatorConfig"]

APPROXIMATIONS = ("kfac", "kflr", "block", "diag")
WEIGHT_SHARING = ("expand", "reduce")


@dataclass(frozen=True)
class EstimatorConfig:
    """Estimator settings (see the module docstring).

    Example:
        >>> cfg = EstimatorConfig({"fc": "kflr", "*norm*": "diag"})
        >>> cfg.approximation("bn.norm1", "kfac"), cfg.approximation("fc", "kfac"), cfg.approximation("c", "kfac")
        ('diag', 'kflr', 'kfac')
        >>> EstimatorConfig({"fc": "shampoo"})
        Traceback (most recent call last):
        ...
        ValueError: approximations['fc'] = 'shampoo' is not one of kfac, kflr, block, diag
    """

    approximations: Mapping[str, str] = field(default_factory=dict)
    weight_sharing: str = "expand"
    mc_samples: int = 1
    generator: object = None

    def __post_init__(self):
        if not isinstance(self.approximations, Mapping):
            raise TypeError(f"approximations must be a mapping pattern -> name, got {type(self.approximations).__name__}")
        for pattern, name in self.approximations.items():
            if name not in APPROXIMATIONS:
                raise ValueError(f"approximations[{pattern!r}] = {name!r} is not one of {', '.join(APPROXIMATIONS)}")
        if self.weight_sharing not in WEIGHT_SHARING:
            raise ValueError(f"weight_sharing must be 'expand' or 'reduce', got {self.weight_sharing!r}")

    def approximation(self, layer: str, quantity: str) -> str:
        """The approximation of ``layer`` inside the Kronecker quantity ``quantity``."""
        for pattern, name in self.approximations.items():
            if fnmatch.fnmatchcase(layer, pattern):
                return name
        return quantity

    def check_patterns(self, layers: Sequence[str]) -> None:
        """Raise if a pattern matches no layer (a typo would silently change nothing)."""
        for pattern in self.approximations:
            if not any(fnmatch.fnmatchcase(layer, pattern) for layer in layers):
                raise ValueError(
                    f"approximations pattern {pattern!r} matches no layer; layers: {', '.join(layers)}"
                )
