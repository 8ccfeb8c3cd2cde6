import pytest
import torch

from tests.cases import CASES, SEQUENTIAL_CASES

torch.set_num_threads(1)


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


@pytest.fixture(params=SEQUENTIAL_CASES, ids=lambda c: c.name)
def sequential_case(request):
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param

# Property tests explore random shapes; in CI they replay a fixed set of examples so a run is reproducible.
from hypothesis import settings  # noqa: E402

settings.register_profile("curvlab", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("curvlab")
