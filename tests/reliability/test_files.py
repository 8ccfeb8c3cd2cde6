"""Reliability of files (issue 11, cases 12 and 13): hostile Curvature files, file modes, stale temporaries,
full disks and file-size limits. The old file always stays intact."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import xarray as xr
from torch import nn

import curvlab
from curvlab.io import load, save
from tests.repr.factories import build


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("curvature")
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    result = curvlab.compute(model, nn.CrossEntropyLoss(), (x, y), ["diag_ggn", "kflr"], progress=False)
    return save(result, tmp_path / "good.nc")


def _tamper(path: Path, edit, tmp_path: Path) -> Path:
    tree = xr.load_datatree(path, engine="h5netcdf")
    edit(tree)
    out = tmp_path / "hostile.nc"
    tree.to_netcdf(out, engine="h5netcdf")
    return out


# ---------------------------------------------------------------- 12: hostile Curvature files
def test_unknown_child_kind_is_a_clear_value_error(good_file, tmp_path):
    """Before: KeyError('os:system'). After: ValueError naming the group and the kind."""
    def edit(tree):
        tree["diag_ggn"].attrs["curvlab_kind"] = "os:system"

    hostile = _tamper(good_file, edit, tmp_path)
    with pytest.raises(ValueError, match=r"group 'diag_ggn' has curvlab_kind='os:system'"):
        load(hostile)


@pytest.mark.parametrize("quantities", ["/", "..", "kflr/..", "missing", "diag_ggn,diag_ggn"])
def test_quantities_naming_no_child_is_a_clear_value_error(good_file, tmp_path, quantities):
    """Before: quantities='/' recursed into the root until RecursionError. After: ValueError."""
    def edit(tree):
        tree.attrs["quantities"] = quantities

    hostile = _tamper(good_file, edit, tmp_path)
    with pytest.raises(ValueError, match="not a valid curvlab Curvature export"):
        load(hostile)


def test_nested_curvature_kind_is_refused(good_file, tmp_path):
    def edit(tree):
        tree["kflr"].attrs["curvlab_kind"] = "curvature"

    with pytest.raises(ValueError, match="curvlab_kind='curvature'"):
        load(_tamper(good_file, edit, tmp_path))


def test_the_untampered_file_still_loads(good_file):
    back = load(good_file)
    assert set(back) == {"diag_ggn", "kflr"}


# ---------------------------------------------------------------- 13: files
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_save_uses_the_umask_mode(tmp_path, umask):
    """Before: 0600 (mkstemp's mode). After: 0666 & ~umask, as open() and the PNGs beside it."""
    old = os.umask(umask)
    try:
        path = save(build("diagonal")[0], tmp_path / "c.nc")
        (tmp_path / "beside.png").write_bytes(b"")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask == (tmp_path / "beside.png").stat().st_mode & 0o777


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys, xarray as xr
    import curvlab.io
    def stall(self, target=None, **kwargs):  # the writer is killed half-way through
        if target is not None:
            open(target, "wb").write(b"half a file")
        print("writing", flush=True)
        signal.pause()
    xr.Dataset.to_netcdf = stall
    curvlab.io.get_memory_budget = lambda: 0  # write straight to the temporary file
    curvlab.io.write_netcdf(xr.Dataset({"x": ("n", [1.0, 2.0])}), sys.argv[1], overwrite=True)
""")


def test_temporary_file_of_a_killed_save_is_cleaned_up(tmp_path):
    """Before: the killed writer's .c.nc.*.tmp stayed forever. After: the next save removes it."""
    path = tmp_path / "c.nc"
    save(build("diagonal")[0], path)
    good = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    left = [p.name for p in tmp_path.iterdir() if p.name != "c.nc"]
    assert len(left) == 1 and left[0].startswith(".c.nc.") and left[0].endswith(".tmp")
    assert path.read_bytes() == good  # the killed save left the old file intact
    save(build("dense")[0], path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nc"]
    assert type(load(path)).__name__ == "DenseCurvature"


def test_temporary_file_of_a_live_writer_is_left_alone(tmp_path):
    from curvlab.io import _HOST, remove_stale_temporaries

    live = tmp_path / f".c.nc.{_HOST}-{os.getppid()}.abcdefgh.tmp"  # pytest's parent: alive
    other_host = tmp_path / ".c.nc.elsewhere-999999999.abcdefgh.tmp"
    for p in (live, other_host):
        p.write_bytes(b"busy")
    assert remove_stale_temporaries(tmp_path / "c.nc") == []
    assert live.exists() and other_host.exists()


def test_disk_full_is_refused_before_writing_and_the_old_file_stays(tmp_path, monkeypatch):
    """Before: no check (a real full disk segfaults inside HDF5). After: OSError(ENOSPC) before writing."""
    path = tmp_path / "c.nc"
    save(build("diagonal")[0], path)
    good = path.read_bytes()
    usage = os.statvfs(tmp_path)
    monkeypatch.setattr("curvlab.io.shutil.disk_usage",
                        lambda _: type("U", (), {"free": 1000, "total": usage.f_blocks, "used": 0})())
    with pytest.raises(OSError, match="not enough free space") as info:
        save(build("dense")[0], path, overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nc"]


_SIZE_LIMITED = textwrap.dedent("""
    import resource, signal, sys, numpy as np, xarray as xr
    import curvlab.io
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    big = xr.Dataset({"x": ("n", np.random.default_rng(0).random(100_000))})
    try:
        curvlab.io.write_netcdf(big, sys.argv[1], overwrite=True)
    except OSError as err:
        print("OSError", err.errno, err)
""")


def test_write_failing_half_way_is_a_clean_error_and_the_old_file_stays(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the write fail half-way, as a full disk would.
    Before: HDF5 raised RuntimeError and the process segfaulted (rc -11). After: OSError(EFBIG), rc 0."""
    path = tmp_path / "c.nc"
    save(build("diagonal")[0], path)
    good = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", _SIZE_LIMITED, str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"OSError {errno.EFBIG} ") and "previous file is untouched" in done.stdout
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nc"]
