"""The README's Python examples run as written (in a temporary directory)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_execute(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[python block {i}]", "exec"), {})
    assert (tmp_path / "kflr.nc").exists()


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert "curvlab analyze" in head and "python -m pytest" in head
    assert head.count("pip install torch==2.13.0") == 2
