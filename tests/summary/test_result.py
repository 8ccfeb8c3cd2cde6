"""GroupedNewtonSummary: export schema, exact round trips (in memory and through netCDF), the SummaryMatrix
view and the step convenience."""

from __future__ import annotations

import pytest
import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.repr import SummaryMatrix
from curvlab.summary import GroupedNewtonSummary, SummaryCurvature, grouped_newton_summary
from tests.cases import CASES


@pytest.fixture(scope="module")
def summary():
    model, loss_fn, x, y = CASES[0].build(4)
    return grouped_newton_summary(model, loss_fn, (x, y), curvature="ggn")


def test_schema(summary):
    ds = summary.to_xarray()
    assert ds["gbar"].dims == ("group",) and ds["d3"].dims == ("group",)
    assert ds["hbar"].dims == ("group_i", "group_j")
    assert list(ds["group"].values) == list(summary.group_names) == list(ds["group_j"].values)
    assert ds["group_size"].values.tolist() == [g.size for g in summary.partition.groups]
    assert ds.attrs["curvlab_kind"] == "grouped_newton_summary" and ds.attrs["curvature"] == "ggn"
    assert Partition.from_json(ds.attrs["partition"]) == summary.partition
    assert "git_sha" in ds.attrs and '"partition": "canonical"' in ds.attrs["config"]
    assert all("long_name" in ds[v].attrs for v in ("gbar", "hbar", "d3", "group"))
    assert "Gauss-Newton" in ds["hbar"].attrs["long_name"]
    torch.testing.assert_close(torch.from_numpy(ds["hbar"].values), summary.hbar)


def test_round_trip_in_memory_and_through_netcdf(summary, tmp_path):
    ds = summary.to_xarray()
    back = GroupedNewtonSummary.from_xarray(ds)
    xr.testing.assert_identical(back.to_xarray(), ds)
    assert back.curvature is SummaryCurvature.GGN and torch.equal(back.d3, summary.d3)
    path = tmp_path / "summary.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as loaded:
        again = GroupedNewtonSummary.from_xarray(loaded.load())
    xr.testing.assert_identical(again.to_xarray(), ds)


def test_order_two_exports_without_d3():
    part = Partition.from_model(torch.nn.Linear(1, 1), "canonical")
    s = GroupedNewtonSummary(torch.ones(2), torch.eye(2), None, part, "hessian", {"seed": 3})
    ds = s.to_xarray()
    assert "d3" not in ds and ds.attrs["seed"] == 3 and s.order == 2
    back = GroupedNewtonSummary.from_xarray(ds)
    assert back.d3 is None and back.attrs == {"seed": 3}


def test_hbar_matrix_is_a_summary_matrix(summary):
    matrix = summary.hbar_matrix()
    assert isinstance(matrix, SummaryMatrix) and matrix.partition == summary.partition
    torch.testing.assert_close(matrix.dense(), summary.hbar)
    assert matrix.attrs["curvature"] == "ggn"


def test_step_solves_the_summary_system(summary):
    eta = summary.step().eta
    torch.testing.assert_close(summary.hbar.double() @ eta, summary.gbar.double())


def test_invalid_input_is_refused():
    part = Partition.from_model(torch.nn.Linear(1, 1), "canonical")
    with pytest.raises(ValueError, match=r"gbar must be \[S\] and hbar \[S, S\] with S = 2"):
        GroupedNewtonSummary(torch.ones(3), torch.eye(2), None, part, "hessian")
    with pytest.raises(ValueError, match=r"d3 must be \[S\] = \[2\]"):
        GroupedNewtonSummary(torch.ones(2), torch.eye(2), torch.ones(1), part, "hessian")
    with pytest.raises(ValueError, match="curvlab_kind='grouped_newton_summary'"):
        GroupedNewtonSummary.from_xarray(xr.Dataset(attrs={"curvlab_kind": "dense"}))
