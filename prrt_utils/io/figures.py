"""The book's palette and its one Kaplan-Meier figure (plotly), for every stage that draws.

It sits in the first stage so that every later one may import it: the colours of a model,
a class or a group are the same on every page, and every Kaplan-Meier curve of the book
(chapter 01's cohort, chapter 05's and chapter 08's predicted groups, chapter 07's true
against censored PFS) is drawn by :func:`km_figure` from a tidy table of step curves that the
stage computing it returns:

* chapter 01: :meth:`prrt_utils.data.cohort_stats.KMResult.curve` with the paper's median and IQR,
* chapters 05 and 08: :meth:`prrt_utils.analysis.kaplan_meier.KMByPrediction.labelled_curves`,
* chapter 07: :func:`prrt_utils.models.survival.km_truth_curves`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "PALETTE",
    "km_figure",
    "rgba",
]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
"""Colours of the book's figures, in order of use: blue (long PFS, ours), red (short PFS, the paper), ...; grey last."""

QUARTILE_LEVELS = (0.75, 0.5, 0.25)
"""Survival at the first quartile, the median and the third quartile of PFS."""


def rgba(hex_colour: str, alpha: float) -> str:
    """``"#1f77b4"``, 0.2 -> ``"rgba(31,119,180,0.2)"``: a palette colour made transparent."""
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def km_figure(curves: pd.DataFrame, *, threshold: float | None = None, title: str = "",
              quartiles: Mapping[str, Sequence[float]] | None = None, at_risk: pd.DataFrame | None = None) -> go.Figure:
    """Kaplan-Meier step curves, with their 95 % bands where given (plotly).

    Parameters
    ----------
    curves : DataFrame
        ``group, time_months, survival`` and, for a band, ``ci_lower, ci_upper``: one step curve
        per group, in order of first appearance, coloured by :data:`PALETTE`; the group is the
        legend entry.
    threshold : float, optional
        Months; a dashed grey vertical line (the 12-month split of short and long PFS).
    title : str
        Figure title.
    quartiles : mapping legend name -> (q1, median, q3), optional
        PFS quartiles in months, drawn as markers at survival 0.75, 0.5 and 0.25: the first in
        the colour of the first curve (ours), the others as grey crosses (references such as
        the paper's).
    at_risk : DataFrame, optional
        ``time_months, at_risk``: the patients at risk, as a row of counts under the curves
        (the x-axis ticks at those times).

    Returns
    -------
    plotly.graph_objects.Figure
        Per group a band trace (``fill="toself"``, no legend) when the curve has a band, then
        the curve; then one marker trace per quartile set; then the at-risk counts (``mode="text"``).
    """
    if at_risk is not None:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.84, 0.16], vertical_spacing=0.04)
        top = {"row": 1, "col": 1}
    else:
        fig, top = go.Figure(), {}
    bands = {"ci_lower", "ci_upper"} <= set(curves.columns)
    for i, (group, g) in enumerate(curves.groupby("group", sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        t = g["time_months"].to_numpy(dtype=float)
        if bands:
            fig.add_trace(go.Scatter(x=np.r_[t, t[::-1]], y=np.r_[g["ci_upper"].to_numpy(), g["ci_lower"].to_numpy()[::-1]],
                                     fill="toself", fillcolor=rgba(colour, 0.15), line={"width": 0, "shape": "hv"},
                                     hoverinfo="skip", showlegend=False), **top)
        fig.add_trace(go.Scatter(x=t, y=g["survival"].to_numpy(), mode="lines", name=str(group),
                                 line={"color": colour, "width": 2, "shape": "hv"},
                                 hovertemplate="%{x:.1f} months: %{y:.2f} progression-free<extra></extra>"), **top)
    for i, (name, (q1, median, q3)) in enumerate((quartiles or {}).items()):
        marker = ({"color": PALETTE[0], "symbol": "circle-open", "size": 9} if i == 0
                  else {"color": PALETTE[-1], "symbol": "x", "size": 9})
        fig.add_trace(go.Scatter(x=[q1, median, q3], y=list(QUARTILE_LEVELS), mode="markers", marker=marker,
                                 name=name), **top)
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="grey", annotation_text=f"{threshold:g} months", **top)
    axis_title = "Months since the first PRRT cycle"
    if at_risk is not None:
        fig.add_trace(go.Scatter(x=at_risk["time_months"], y=[0] * len(at_risk), mode="text",
                                 text=at_risk["at_risk"].astype(str), showlegend=False, hoverinfo="skip"), row=2, col=1)
        fig.update_yaxes(title_text="at risk", showticklabels=False, showgrid=False, zeroline=False, row=2, col=1)
        fig.update_xaxes(title_text=axis_title, tickvals=at_risk["time_months"], row=2, col=1)
    else:
        fig.update_xaxes(title_text=axis_title)
    fig.update_yaxes(title_text="Progression-free (Kaplan-Meier)", range=[0, 1.02], **top)
    legend = {"x": 0.99, "xanchor": "right", "y": 0.99} if at_risk is not None else {"orientation": "h", "y": -0.2}
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=520 if at_risk is not None else 420,
                      legend=legend, margin={"t": 50})
    return fig
