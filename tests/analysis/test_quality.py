"""Matrix metrics against hand-derived cases and brute-force definitions (float64)."""

import math

import numpy as np
import pytest
import torch

from curvlab.analysis import quality
from curvlab.analysis.quality import (
    Metric,
    cosine_similarity,
    eigenspace_overlap,
    matrix_quality,
    relative_frobenius_error,
    relative_spectral_error,
    spectral_norm,
)


def spd(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64)


def test_identical_matrices_are_perfect():
    e = spd(6)
    assert float(relative_frobenius_error(e, e)) == 0.0
    assert float(relative_spectral_error(e, e)) == 0.0
    assert float(cosine_similarity(e, e)) == pytest.approx(1.0, abs=1e-14)
    assert float(eigenspace_overlap(e, e, k=3)) == pytest.approx(1.0, abs=1e-12)


def test_known_kronecker_product():
    # E = A ⊗ B against Ã = A ⊗ I: every metric has a closed form in A and B.
    a, b = spd(3, 1), spd(4, 2)
    eye = torch.eye(4, dtype=torch.float64)
    e, approx = torch.kron(a, b), torch.kron(a, eye)
    fro = torch.linalg.matrix_norm(b - eye) / torch.linalg.matrix_norm(b)
    spec = torch.linalg.eigvalsh(b - eye).abs().max() / torch.linalg.eigvalsh(b).abs().max()
    cos = b.trace() / (torch.linalg.matrix_norm(b) * 2.0)  # sqrt(n) = 2
    assert float(relative_frobenius_error(e, approx)) == pytest.approx(float(fro), rel=1e-12)
    assert float(relative_spectral_error(e, approx)) == pytest.approx(float(spec), rel=1e-12)
    assert float(cosine_similarity(e, approx)) == pytest.approx(float(cos), rel=1e-12)


def test_scaled_matrix():
    e = spd(5)
    assert float(relative_frobenius_error(e, 3 * e)) == pytest.approx(2.0)
    assert float(relative_spectral_error(e, 0.5 * e)) == pytest.approx(0.5)
    assert float(cosine_similarity(e, -e)) == pytest.approx(-1.0)


def test_eigenspace_overlap_is_squared_cosine_of_rotation():
    theta = 0.3
    e = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    rot = torch.eye(3, dtype=torch.float64)
    rot[0, 0] = rot[2, 2] = math.cos(theta)
    rot[0, 2], rot[2, 0] = -math.sin(theta), math.sin(theta)
    approx = rot @ e @ rot.T
    assert float(eigenspace_overlap(e, approx, k=1)) == pytest.approx(math.cos(theta) ** 2, rel=1e-12)
    # the top-3 space is everything
    assert float(eigenspace_overlap(e, approx, k=3)) == pytest.approx(1.0)


def test_metrics_match_numpy_definitions():
    e, a = spd(7, 3), spd(7, 4)
    en, an = e.numpy(), a.numpy()
    assert float(relative_frobenius_error(e, a)) == pytest.approx(np.linalg.norm(an - en) / np.linalg.norm(en))
    assert float(relative_spectral_error(e, a)) == pytest.approx(np.linalg.norm(an - en, 2) / np.linalg.norm(en, 2))
    assert float(cosine_similarity(e, a)) == pytest.approx((an * en).sum() / np.linalg.norm(an) / np.linalg.norm(en))
    v, w = np.linalg.eigh(en)[1][:, -2:], np.linalg.eigh(an)[1][:, -2:]
    assert float(eigenspace_overlap(e, a, 2)) == pytest.approx(((v.T @ w) ** 2).sum() / 2)


def test_lanczos_path_agrees_with_eigh(monkeypatch):
    e, a = spd(40, 5), spd(40, 6)
    dense = (float(relative_spectral_error(e, a)), float(eigenspace_overlap(e, a, 3)), float(spectral_norm(a - e)))
    monkeypatch.setattr(quality, "LANCZOS_THRESHOLD", 10)
    lanczos = (float(relative_spectral_error(e, a)), float(eigenspace_overlap(e, a, 3)), float(spectral_norm(a - e)))
    assert lanczos == pytest.approx(dense, rel=1e-8)


def test_representation_input():
    from curvlab.partition import Partition
    from curvlab.repr import DiagonalCurvature

    part = Partition.from_model(torch.nn.Linear(2, 1), "canonical")
    rep = DiagonalCurvature(torch.tensor([1.0, 2.0, 3.0]), part, quantity="ggn")
    assert float(relative_frobenius_error(torch.diag(torch.tensor([1.0, 2.0, 3.0])), rep)) == 0.0


def test_zero_exact_gives_nan():
    z = torch.zeros(3, 3)
    assert math.isnan(float(relative_frobenius_error(z, torch.eye(3))))
    assert math.isnan(float(cosine_similarity(torch.eye(3), z)))


def test_matrix_quality_per_block():
    e = torch.block_diag(spd(2, 1), spd(3, 2))
    approx = e.clone()
    approx[:2, :2] *= 2  # only block 0 is wrong
    names, values = matrix_quality(e, approx, [torch.arange(2), torch.arange(2, 5)], k=1)
    assert names == ["block0", "block1", "all"]
    col = [m.value for m in Metric].index("rel_frobenius_error")
    assert values[0, col] == pytest.approx(1.0)
    assert values[1, col] == 0.0
    fro = float(torch.linalg.matrix_norm(e[:2, :2]) / torch.linalg.matrix_norm(e))
    assert values[2, col] == pytest.approx(fro)


@pytest.mark.parametrize("bad, error", [(torch.zeros(3), ValueError), ("matrix", TypeError),
                                        (torch.zeros(2, 2), ValueError)])
def test_bad_input_names_the_culprit(bad, error):
    with pytest.raises(error, match="approximation"):
        relative_frobenius_error(torch.eye(3), bad)


def test_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        eigenspace_overlap(torch.eye(3), torch.eye(3), k=4)
