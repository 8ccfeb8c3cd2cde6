"""Sphinx configuration of the curvlab documentation (built in CI with warnings as errors: tests/test_docs.py).

The gallery (``gallery/*.py``) is executed at build time: each script asserts against curvlab's dense
ground truth (:mod:`curvlab.reference`), and its source and printed output become one page.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

project = "curvlab"
author = "curvlab developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "gallery/*.py", "**/.ipynb_checkpoints", "figures/**"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # dataclass "Attributes:" as fields, not a second description of each attribute
suppress_warnings = ["toc.glob"]  # docs/extending.md (the contributor guide) joins the toctree when it exists
html_theme = "alabaster"
html_static_path: list[str] = []
os.environ.setdefault("MPLBACKEND", "Agg")


def _run_gallery(app) -> None:
    """Execute every gallery script (failing the build on a failed assertion) and write its page."""
    out_dir = HERE / "gallery" / "_generated"
    out_dir.mkdir(exist_ok=True)
    pages = []
    for script in sorted((HERE / "gallery").glob("*.py")):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            namespace = runpy.run_path(str(script), run_name="__main__")
        title = (namespace.get("__doc__") or script.stem).strip().splitlines()[0]
        source = script.read_text()
        page = [f"# {title}", "", f"Source: `docs/gallery/{script.name}` (executed when the docs are built).", "",
                "```python", source.rstrip(), "```", "", "Output:", "", "```text", buffer.getvalue().rstrip() or "(none)",
                "```", ""]
        (out_dir / f"{script.stem}.md").write_text("\n".join(page))
        pages.append(script.stem)
    index = ["# Gallery", "", "Short examples, executed when the documentation is built; each asserts its result "
             "against the dense ground truth of `curvlab.reference`.", "", "```{toctree}", ":maxdepth: 1", "",
             *[f"{p}" for p in pages], "```", ""]
    (out_dir / "index.md").write_text("\n".join(index))


def _plain_maths(app, what, name, obj, options, lines) -> None:
    """Docstrings write maths in Unicode (|x|, ‖x‖, H̄_ij); keep RST from reading |...| as substitutions and
    ``*name`` / ``**name`` as emphasis, except in doctest lines and literal blocks, which are shown verbatim."""
    literal = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith((">>>", "...")):
            continue
        if literal and stripped and not line.startswith((" ", "\t")):
            literal = False
        if not literal:
            line = line.replace("|", "∣")  # same width, so simple tables keep their columns
            line = re.sub(r"(?<=[\s\[(,])\*{1,2}(?=[A-Za-z_])", lambda m: "\\*" * len(m.group()), line)
            if stripped.startswith("Others as for"):  # napoleon would read ":func" as a parameter name
                line = re.sub(r":\w+:`~?([^`]+)`", r"``\1``", line)
            lines[i] = line
        if stripped.endswith("::"):
            literal = True
    _literal_if_malformed(lines)


def _literal_if_malformed(lines) -> None:
    """Show a simple table whose text runs into the column gaps as a literal block (RST would reject it)."""
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"\s*=+( +=+)+\s*", line)]
    for start, end in zip(borders[::3], borders[2::3], strict=False):
        border = lines[start]
        if start >= 2 and lines[start - 2].strip() == "::":
            continue
        gaps = [j for j, ch in enumerate(border) if ch == " " and j > len(border) - len(border.lstrip())]
        rows = lines[start:end + 1]
        if any(len(row) > j and row[j] != " " for row in rows for j in gaps) or any(len(r) > len(border) for r in rows):
            indent = " " * (len(border) - len(border.lstrip()))
            lines[start:end + 1] = [indent + "::", ""] + [indent + "    " + r[len(indent):] for r in rows] + [""]
            return _literal_if_malformed(lines)

def setup(app):
    app.connect("builder-inited", _run_gallery)
    app.connect("autodoc-process-docstring", _plain_maths, priority=400)  # before napoleon
