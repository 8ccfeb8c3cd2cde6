"""docs/extending.md's worked examples run as written (issue 10, item 7)."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_extending_examples_execute():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 3
    from curvlab.collector import ADAPTERS
    from curvlab.losses import _ADAPTERS

    adapters, losses = list(ADAPTERS), dict(_ADAPTERS)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/extending.md[python block {i}]", "exec"), {})
    finally:  # the examples register an adapter and a loss: restore the defaults
        ADAPTERS[:] = adapters
        _ADAPTERS.clear()
        _ADAPTERS.update(losses)
