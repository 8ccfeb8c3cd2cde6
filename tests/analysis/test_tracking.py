"""Tracker: records every k steps, saves incrementally, survives an exception."""

import numpy as np
import pytest
import torch
import xarray as xr

from curvlab.analysis import netcdf
from curvlab.analysis.tracking import Tracker


def test_every_k_steps_with_tensors_and_statistics():
    state = {"w": torch.ones(2, 3)}

    class FakeOptimizer:
        def statistics(self):
            return {"damping": 0.5, "trace": torch.tensor(3.0)}

    tracker = Tracker({"weights": lambda: {"w": state["w"], "norm": state["w"].norm()},
                       "opt": FakeOptimizer().statistics}, every=3)
    for step in range(7):
        tracker(step)
        state["w"] = state["w"] + 1
    ds = tracker.dataset
    assert ds.step.values.tolist() == [0, 3, 6]
    assert ds.w.dims == ("step", "w_dim0", "w_dim1")
    assert ds.w.sel(step=3).values.tolist() == [[4.0] * 3] * 2
    assert ds.damping.values.tolist() == [0.5] * 3
    assert ds.norm.values == pytest.approx([np.sqrt(6) * c for c in (1, 4, 7)])


def test_survives_exception_with_data_saved(tmp_path):
    path = tmp_path / "track.nc"
    with pytest.raises(RuntimeError, match="diverged"):
        with Tracker(lambda: {"loss": 1.0}, every=1, path=path) as tracker:
            for step in range(10):
                tracker(step)
                if step == 4:
                    raise RuntimeError("diverged")
    with netcdf.read(path) as saved:
        assert saved.step.values.tolist() == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob(".*partial"))


def test_file_is_complete_after_every_measurement(tmp_path):
    path = tmp_path / "t.nc"
    tracker = Tracker(lambda: {"x": 2.0}, path=path)
    tracker(0)
    with netcdf.read(path) as first:
        assert first.step.size == 1
    tracker(1)
    with netcdf.read(path) as second:
        assert second.x.values.tolist() == [2.0, 2.0]


def test_missing_quantity_is_nan_and_datasets_are_merged():
    values = iter([{"a": 1.0}, {"a": 2.0, "b": 5.0}])
    extra = xr.Dataset({"c": ("block", [1.0, 2.0])}, coords={"block": ["x", "y"]})
    tracker = Tracker({"v": lambda: next(values), "ds": lambda: extra})
    tracker(0)
    tracker(1)
    ds = tracker.dataset
    assert np.isnan(ds.b.sel(step=0)) and float(ds.b.sel(step=1)) == 5.0
    assert ds.c.dims == ("step", "block")


def test_refuses_existing_file(tmp_path):
    path = tmp_path / "t.nc"
    path.write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        Tracker(lambda: {}, path=path)
    Tracker(lambda: {"a": 1.0}, path=path, overwrite=True)(0)
    assert netcdf.read(path).a.size == 1


@pytest.mark.parametrize("measures, every, error", [({}, 1, ValueError), ({"a": 3}, 1, TypeError),
                                                    (lambda: {}, 0, ValueError)])
def test_bad_arguments(measures, every, error):
    with pytest.raises(error):
        Tracker(measures, every=every)


def test_non_numeric_value_names_it():
    tracker = Tracker({"m": lambda: {"label": object()}})
    with pytest.raises(TypeError, match="label"):
        tracker(0)


def test_saved_file_is_compressed_and_lossless(tmp_path):
    import numpy as np
    import xarray as xr

    from curvlab.analysis import Tracker, netcdf

    values = np.repeat(np.linspace(0, 1, 50), 200)  # compressible, and not float32-representable
    tracker = Tracker({"q": lambda: xr.Dataset({"v": ("i", values + 1e-12)})}, path=tmp_path / "q.nc")
    tracker.record(0)
    back = netcdf.read(tmp_path / "q.nc")
    assert back.v.dtype == np.float64 and np.array_equal(back.v.values[0], values + 1e-12)
    assert (tmp_path / "q.nc").stat().st_size < values.nbytes / 4
