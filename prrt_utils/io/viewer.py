"""Images to explore without a kernel: plotly figures whose slider, buttons and menus work in static HTML.

The book is static HTML with no kernel behind it, so an ipywidgets slider cannot
redraw a slice. The figures here carry every image they can show, each slice
encoded once as a small PNG (8-bit grey or RGBA, base64 in a ``data:`` URI, so
nothing is fetched), and switch between them with plotly's own slider, buttons
and drop-down menus (``restyle`` of the image traces' ``source``), which
plotly.js runs in the browser from the book's ``_static`` folder.

* :func:`slice_viewer`: one volume with a slice slider, axial / coronal /
  sagittal buttons, a menu of colour overlays (e.g. the saliency of each model)
  and optional outlines (e.g. the true lesions of the synthetic cohort);
  used by chapter 06 (:func:`prrt_utils.analysis.explain_figures.saliency_viewer`).
* :func:`image_browser`: a few panels per item (e.g. PET MIP and CT of each
  patient), the item chosen from a drop-down; used by chapter 02
  (:func:`prrt_utils.data.qc.qc_browser`).

Orientation follows :func:`prrt_utils.analysis.explain_figures.saliency_figure`: arrays are
``(D, H, W)`` = (head -> feet, anterior -> posterior, patient right -> left);
axial slices are seen from the feet (patient right on the image left), coronal
from the front, sagittal with anterior on the left.

Size: a 75 x 50 x 50 PET in three planes is 175 PNGs of about 1 kB; an overlay
that is transparent below a threshold costs a few hundred bytes a slice.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots
from scipy import ndimage

__all__ = [
    "PLANES",
    "decode_png",
    "image_browser",
    "outline_rgba",
    "overlay_rgba",
    "plane_slice",
    "png_uri",
    "slice_viewer",
    "window_uint8",
]

#: The three planes, in button order, with the array axis each one slices.
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}

#: Colours of the overlays (drawn above ``vmin``) and of the outlines.
OVERLAY_CMAP = "autumn"
OUTLINE_RGB = (0, 255, 255)


def png_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of a uint8 image: ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"png_uri needs uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"png_uri needs (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(uri: str) -> np.ndarray:
    """The pixels of a :func:`png_uri` (for tests and for reading a figure back)."""
    head, data = uri.split(",", 1)
    if head != "data:image/png;base64":
        raise ValueError(f"not a base64 PNG data URI: {head[:40]!r}")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def window_uint8(values: np.ndarray, low: float, high: float, invert: bool = False) -> np.ndarray:
    """Values mapped linearly from ``[low, high]`` to 0..255 (clipped, rounded); ``invert``: ``low`` is white.

    A nuclear-medicine reader looks at PET as dark uptake on white (``invert=True``)
    in a fixed SUV window such as 0-10; CT in a soft-tissue window such as -160..240 HU.
    """
    if not high > low:
        raise ValueError(f"window needs high > low, got {low}, {high}")
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    if invert:
        scaled = 1.0 - scaled
    return np.rint(scaled * 255).astype(np.uint8)


def overlay_rgba(values: np.ndarray, vmin: float = 0.3, vmax: float = 1.0, cmap: str = OVERLAY_CMAP,
                 alpha: float = 0.85) -> np.ndarray:
    """RGBA uint8 of a map in ``[0, 1]``: transparent below ``vmin``, ``cmap`` colours from ``vmin`` to ``vmax``."""
    values = np.asarray(values, dtype=np.float64)
    scaled = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgba = np.rint(matplotlib.colormaps[cmap](scaled) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(values >= vmin, int(round(alpha * 255)), 0)
    return rgba


def outline_rgba(mask: np.ndarray, rgb: Sequence[int] = OUTLINE_RGB) -> np.ndarray:
    """RGBA uint8 of the outline of a 2D mask: its pixels that touch a pixel outside it (4-neighbours)."""
    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[edge] = (*rgb, 255)
    return rgba


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Slice ``index`` of a ``(D, H, W)`` volume in ``plane`` (axial ``(H, W)``, coronal ``(D, W)``, sagittal ``(D, H)``)."""
    axis = PLANES[plane]
    return np.take(volume, index, axis=axis)


def _image_trace(uri: str, name: str, visible: bool = True, hover: bool = False) -> Any:
    return go.Image(source=uri, name=name, visible=visible, hoverinfo="x+y" if hover else "skip",
                    hovertemplate="column %{x}, row %{y}<extra></extra>" if hover else None)


def _axis_ranges(shape: Sequence[int]) -> dict[str, list[float]]:
    rows, cols = shape[:2]
    return {"xaxis.range": [-0.5, cols - 0.5], "yaxis.range": [rows - 0.5, -0.5]}


def _viewer_inputs(volume: np.ndarray, overlays: Mapping[str, np.ndarray] | None, outlines: np.ndarray | None,
                   at: Sequence[int] | None) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int, int]]:
    """:func:`slice_viewer`'s arrays as float32, checked to share the volume's shape, and the first slices.

    Returns
    -------
    volume : ndarray (D, H, W) float32
    overlays : dict label -> ndarray (D, H, W) float32
    at : (d, h, w)
        As given; else the voxel of largest summed overlay; else the centre.

    Raises
    ------
    ValueError
        A volume that is not 3-D, or an overlay or the outlines of another shape.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"slice_viewer needs a (D, H, W) volume, got shape {volume.shape}")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in (overlays or {}).items()}
    for label, v in arrays.items():
        if v.shape != volume.shape:
            raise ValueError(f"overlay {label!r} has shape {v.shape}, the volume {volume.shape}")
    if outlines is not None and np.shape(outlines) != volume.shape:
        raise ValueError(f"outlines have shape {np.shape(outlines)}, the volume {volume.shape}")
    if at is None:
        if arrays:
            at = np.unravel_index(int(np.argmax(sum(arrays.values()))), volume.shape)
        else:
            at = tuple(s // 2 for s in volume.shape)
    return volume, arrays, tuple(int(a) for a in at)


def slice_viewer(volume: np.ndarray, overlays: Mapping[str, np.ndarray] | None = None, *,
                 window: tuple[float, float] = (0.0, 10.0), invert: bool = True, vmin: float = 0.3,
                 outlines: np.ndarray | None = None, at: Sequence[int] | None = None,
                 volume_label: str = "PET (SUVbw)", overlay_label: str = "saliency", title: str = "",
                 height: int = 640) -> Any:
    """A volume to scroll through in static HTML: slice slider, plane buttons, overlay menu (plotly).

    Parameters
    ----------
    volume : ndarray (D, H, W)
        Shown in grey through ``window`` (e.g. SUVbw 0-10, dark uptake on white with ``invert``).
    overlays : mapping label -> ndarray (D, H, W), optional
        Maps in [0, 1] (e.g. normalised saliency of each model), drawn in colour where
        ``>= vmin``; a menu shows none of them or one at a time.
    vmin : float
        Overlay values below it are transparent (the paper filters saliency at 0.3).
    outlines : ndarray (D, H, W) of bool, optional
        A mask whose outline (per slice) is drawn in cyan on every view, e.g. the true lesions.
    at : (d, h, w), optional
        The slices shown first; default the voxel of largest summed overlay, else the centre.
    volume_label, overlay_label, title : str
        Words on the figure.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces: the volume, then one per overlay, then the outlines; ``layout.sliders`` holds one
        slider per plane (only the current plane's is visible); each step restyles the ``source``
        of every trace. Works offline with the book's plotly.js, no kernel.
    """
    volume, overlays, at = _viewer_inputs(volume, overlays, outlines, at)
    grey = window_uint8(volume, *window, invert=invert)
    layers = list(overlays)
    n_traces = 1 + len(layers) + (outlines is not None)
    traces = list(range(n_traces))

    def sources(plane: str, index: int) -> list[str]:
        out = [png_uri(plane_slice(grey, plane, index))]
        out += [png_uri(overlay_rgba(plane_slice(overlays[k], plane, index), vmin)) for k in layers]
        if outlines is not None:
            out.append(png_uri(outline_rgba(plane_slice(outlines, plane, index))))
        return out

    sliders, first = [], {}
    for p, (plane, axis) in enumerate(PLANES.items()):
        steps = []
        for i in range(volume.shape[axis]):
            src = sources(plane, i)
            if i == at[axis]:
                first[plane] = src
            steps.append({"label": str(i), "method": "restyle", "args": [{"source": src}, traces]})
        sliders.append({"active": at[axis], "steps": steps, "visible": p == 0, "pad": {"t": 30},
                        "currentvalue": {"prefix": f"{plane} slice ", "font": {"size": 13}},
                        "name": plane})

    fig = go.Figure()
    fig.add_trace(_image_trace(first["axial"][0], volume_label, hover=True))
    for j, label in enumerate(layers, start=1):
        fig.add_trace(_image_trace(first["axial"][j], f"{overlay_label}: {label}", visible=j == 1))
    if outlines is not None:
        fig.add_trace(_image_trace(first["axial"][-1], "outline"))

    plane_buttons = []
    for p, plane in enumerate(PLANES):
        shape = plane_slice(volume, plane, 0).shape
        relayout = {f"sliders[{q}].visible": q == p for q in range(len(PLANES))}
        relayout.update({f"sliders[{p}].active": at[PLANES[plane]], **_axis_ranges(shape)})
        plane_buttons.append({"label": plane, "method": "update", "args": [{"source": first[plane]}, relayout, traces]})
    # the buttons and the menu sit in a band between the title (top of the figure) and the image
    menus = [{"type": "buttons", "direction": "right", "buttons": plane_buttons, "active": 0, "showactive": True,
              "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom", "pad": {"b": 8}, "name": "plane"}]
    if layers:
        visible = [[True] + [False] * len(layers)] + [[True] + [k == j for k in range(len(layers))]
                                                        for j in range(len(layers))]
        if outlines is not None:
            visible = [v + [True] for v in visible]
        labels = [f"{volume_label.split(' (')[0]} only"] + [f"{overlay_label}: {k}" for k in layers]
        menus.append({"type": "dropdown", "buttons": [{"label": lab, "method": "restyle", "args": [{"visible": v}]}
                                                      for lab, v in zip(labels, visible, strict=True)],
                      "active": 1, "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom", "pad": {"b": 8},
                      "name": "overlay"})
    fig.update_layout(
        title={"text": title, "font": {"size": 14}, "y": 0.975, "yanchor": "top", "x": 0.0, "xanchor": "left",
               "xref": "paper"} if title else None,
        sliders=sliders, updatemenus=menus, height=height, margin={"t": 110 if title else 60, "b": 10, "l": 10, "r": 10},
        xaxis={"range": _axis_ranges(grey[0].shape)["xaxis.range"], "showticklabels": False, "showgrid": False,
               "zeroline": False, "constrain": "domain"},
        yaxis={"range": _axis_ranges(grey[0].shape)["yaxis.range"], "showticklabels": False, "showgrid": False,
               "zeroline": False, "scaleanchor": "x", "constrain": "domain"},
        plot_bgcolor="white",
    )
    return fig


def image_browser(items: Mapping[str, Mapping[str, np.ndarray]], title: str = "", item_label: str = "patient",
                  panel_width: int = 260) -> Any:
    """A few images per item side by side, the item chosen from a drop-down (plotly, static HTML).

    Parameters
    ----------
    items : mapping item -> (mapping panel title -> uint8 image)
        Every item has the same panels in the same order, each panel the same shape for every
        item (``(H, W)`` grey, ``(H, W, 3)`` or ``(H, W, 4)``, e.g. from :func:`window_uint8`).
    title : str
        Figure title; the chosen item's name is appended.

    Returns
    -------
    plotly.graph_objects.Figure
        One image trace per panel; ``layout.updatemenus[0]`` has one button per item, which
        restyles every panel's ``source`` and sets the title.
    """
    if not items:
        raise ValueError("image_browser needs at least one item")
    names = list(items)
    panels = list(items[names[0]])
    for name in names:
        if list(items[name]) != panels:
            raise ValueError(f"{item_label} {name} has panels {list(items[name])}, expected {panels}")
    shapes = [np.shape(items[names[0]][p])[:2] for p in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.02,
                        column_widths=[s[1] for s in shapes])
    uris = {name: [png_uri(items[name][p]) for p in panels] for name in names}

    def heading(name: str) -> str:
        return f"{title}: {name}" if title else name

    for c, (panel, shape) in enumerate(zip(panels, shapes, strict=True), start=1):
        fig.add_trace(_image_trace(uris[names[0]][c - 1], panel, hover=True), row=1, col=c)
        axis = "" if c == 1 else str(c)
        fig.update_xaxes(range=[-0.5, shape[1] - 0.5], showticklabels=False, showgrid=False, zeroline=False,
                         constrain="domain", row=1, col=c)
        fig.update_yaxes(range=[shape[0] - 0.5, -0.5], showticklabels=False, showgrid=False, zeroline=False,
                         scaleanchor=f"x{axis}", constrain="domain", row=1, col=c)
    traces = list(range(len(panels)))
    buttons = [{"label": name, "method": "update", "args": [{"source": uris[name]}, {"title.text": heading(name)}, traces]}
               for name in names]
    height = int(max(s[0] for s in shapes) / max(s[1] for s in shapes) * panel_width) + 140
    fig.update_layout(
        title={"text": heading(names[0]), "font": {"size": 14}},
        updatemenus=[{"type": "dropdown", "buttons": buttons, "active": 0, "x": 1.0, "xanchor": "right", "y": 1.0,
                      "yanchor": "bottom", "pad": {"b": 30}, "name": item_label}],
        height=height, width=None, margin={"t": 100, "b": 10, "l": 10, "r": 10}, plot_bgcolor="white",
    )
    return fig
