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
