"""The documentation site builds with warnings as errors (autodoc API reference, glossary, guides, gallery).

The gallery scripts run during the build and assert against the dense ground truth, so a wrong example
fails this test.
"""

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    from sphinx.cmd.build import (
        build_main,  # sphinx and myst-parser are [dev] dependencies: never skipped
    )

    code = build_main(["-b", "html", "-W", "--keep-going", "-q", "-d", str(tmp_path / "doctrees"), str(DOCS),
                       str(tmp_path / "html")])
    assert code == 0, "sphinx reported warnings or errors (see the captured output)"
    html = (tmp_path / "html" / "api.html").read_text()
    assert "compare_matrix_free" in html and "relative_frobenius_error" in html
    assert (tmp_path / "html" / "glossary.html").exists() and (tmp_path / "html" / "own-model.html").exists()
    gallery = sorted((tmp_path / "html" / "gallery" / "_generated").glob("0*.html"))
    assert len(gallery) >= 2
