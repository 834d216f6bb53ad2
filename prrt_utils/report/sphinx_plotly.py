"""Sphinx extension of the book: one copy of plotly.js in ``_static``, loaded by the pages that draw figures.

The executed notebooks hold only each figure's data and its ``Plotly.newPlot``
call (:func:`prrt_utils.report.book.prepare_for_book` strips the 4.6 MB library that
plotly's notebook renderer writes into the first figure's output). This
extension copies the installed plotly package's own ``plotly.min.js`` into the
built book's ``_static`` folder and adds a ``<script src>`` for it to the head
of every page whose body calls ``Plotly.newPlot``, so a page is its data, not
the library, and the book still opens from disk with no network (a plain
script tag, not ``require``: the page's inline figure scripts run after it).

Listed in ``_config.yml`` under ``sphinx: extra_extensions``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["PLOTLY_JS", "plotly_js_path", "setup"]

#: File name of the library in the built book's ``_static`` folder.
PLOTLY_JS = "plotly.min.js"


def plotly_js_path() -> Path:
    """The installed plotly package's minified plotly.js (the version its figures are written for)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall plotly")
    return path


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if "Plotly.newPlot" in (context.get("body") or ""):
        app.add_js_file(PLOTLY_JS)  # called here, Sphinx adds it to this page only


def _copy_library(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plotly_js_path(), static / PLOTLY_JS)


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _copy_library)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
