"""Notebook set-up shared by every chapter (offline plotly, banner, versions).

Placeholder: the book helper fills this in.
"""


def setup_notebook() -> None:
    import plotly.io as pio

    pio.renderers.default = "notebook"
