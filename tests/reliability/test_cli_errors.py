"""The CLI on bad input (issue 11, case 10, and --data-path of case 3): one line on stderr, exit code 2,
never a traceback, and nothing written."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curvlab.cli.main import main


def _garbage_pt(d: Path) -> Path:
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)
    return d / "garbage.pt"


def _pickle_pt(d: Path) -> Path:
    with open(d / "state.pt", "wb") as fh:  # a plain pickle: refused by weights_only, never run
        pickle.dump({"0.weight": np.zeros((4, 64))}, fh)
    return d / "state.pt"


def _garbage_npz(d: Path) -> Path:
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 but no zip" * 8)
    return d / "garbage.npz"


def _npy_named_npz(d: Path) -> Path:
    np.save(d / "images.npy", np.zeros((3, 28, 28), np.float32))
    (d / "images.npy").rename(d / "images.npz")
    return d / "images.npz"


def _unequal_lengths(d: Path) -> Path:
    np.savez(d / "unequal.npz", images=np.zeros((10, 28, 28), np.float32), labels=np.zeros(7, np.int64))
    return d / "unequal.npz"


def _bad_idx_header(d: Path) -> Path:
    path = d / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 100, 28, 28) + b"\x00" * 50)
    return path


def _unknown_idx_type(d: Path) -> Path:
    path = d / "odd-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x42\x01" + struct.pack(">I", 3) + b"\x00" * 3)
    return path


def _directory(d: Path) -> Path:
    (d / "adir").mkdir()
    return d / "adir"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe.npz")
    return d / "pipe.npz"


DATA_CASES = {  # --data-path value -> words the message must hold
    "garbage-npz": (_garbage_npz, "is not a .npz archive"),
    "npy-named-npz": (_npy_named_npz, "is not a .npz archive"),
    "unequal-lengths": (_unequal_lengths, "10 images but 7 labels"),
    "bad-idx-header": (_bad_idx_header, "declares shape [100, 28, 28]"),
    "unknown-idx-type": (_unknown_idx_type, "is not an IDX file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "fifo": (_fifo, "is a FIFO (named pipe), not a regular file"),
    "missing": (lambda d: d / "missing.npz", "not found"),
}

STATE_CASES = {  # --state-dict value -> words the message must hold
    "garbage-pt": (_garbage_pt, "is not a state dict of plain tensors"),
    "pickle-state-dict": (_pickle_pt, "refused without running any code"),
    "directory": (_directory, "is a directory, not a regular file"),
}


def _fails_with_one_line(argv, capsys, words: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"curvlab {argv[0]}: error: "), err
    assert "Traceback" not in err and words in err, err
    return err


@pytest.mark.parametrize("case", DATA_CASES)
@pytest.mark.parametrize("command", ["analyze", "compute"])
def test_bad_data_path_is_one_line_exit_2(case, command, tmp_path, capsys):
    make, words = DATA_CASES[case]
    out = tmp_path / "out"
    argv = [command, "--no-progress", "--out", str(out), "--dataset", "mnist", "--data-path", str(make(tmp_path))]
    _fails_with_one_line(argv + (["--smoke"] if command == "analyze" else ["--steps", "0"]), capsys, words)
    assert not out.exists()


@pytest.mark.parametrize("case", STATE_CASES)
def test_bad_state_dict_is_one_line_exit_2(case, tmp_path, capsys):
    make, words = STATE_CASES[case]
    argv = ["analyze", "--smoke", "--no-progress", "--out", str(tmp_path / "out"), "--state-dict", str(make(tmp_path))]
    _fails_with_one_line(argv, capsys, words)


def test_out_under_a_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = ["analyze", "--smoke", "--no-progress", "--out", str(tmp_path / "afile" / "sub")]
    _fails_with_one_line(argv, capsys, "Not a directory")


def test_out_read_only_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root ignores the mode: inject the refusal the kernel would give
        def refuse(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "mkdir", refuse)
    try:
        _fails_with_one_line(["analyze", "--smoke", "--no-progress", "--out", str(parent / "sub")], capsys,
                             "Permission denied")
    finally:
        parent.chmod(0o755)


def test_show_of_garbage_is_one_line_exit_2(tmp_path, capsys):
    _fails_with_one_line(["show", str(_garbage_pt(tmp_path))], capsys, "is not a netCDF file")


def test_the_installed_command_prints_no_traceback(tmp_path):
    """End to end, as a user runs it (stderr includes anything a warning or logger would print)."""
    done = subprocess.run(
        [sys.executable, "-m", "curvlab.cli.main", "analyze", "--smoke", "--no-progress", "--out",
         str(tmp_path / "out"), "--state-dict", str(_pickle_pt(tmp_path))],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "refused without running any code" in done.stderr, done.stderr
