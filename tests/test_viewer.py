"""Kernel-free image figures (prrt_utils.io.viewer): every slice the slider offers is the right slice, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest

from prrt_utils.io import viewer
from prrt_utils.io.viewer import decode_png, png_uri, window_uint8

SHAPE = (9, 6, 5)  # (D, H, W): every plane has its own slice count and image shape


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    pet = rng.uniform(0, 12, SHAPE).astype(np.float32)
    hot = np.zeros(SHAPE, dtype=np.float32)
    hot[6, 2, 3] = 1.0  # the overlay's maximum: where the viewer opens
    hot[6, 2, 2] = 0.5
    cold = rng.uniform(0, 0.2, SHAPE).astype(np.float32)  # all below the threshold: never drawn
    lesion = np.zeros(SHAPE, dtype=bool)
    lesion[5:8, 1:4, 1:4] = True
    return pet, {"A": hot, "B": cold}, lesion


def test_png_uris_round_trip_grey_rgb_and_rgba_pixels_exactly():
    rng = np.random.default_rng(1)
    for shape in ((4, 7), (4, 7, 3), (4, 7, 4)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        uri = png_uri(img)
        assert uri.startswith("data:image/png;base64,")
        np.testing.assert_array_equal(decode_png(uri), img)
    with pytest.raises(ValueError, match="uint8"):
        png_uri(np.zeros((3, 3), dtype=np.float32))


def test_a_window_maps_its_ends_to_black_and_white_and_inverts_for_pet():
    v = np.array([-5.0, 0.0, 5.0, 10.0, 20.0])
    np.testing.assert_array_equal(window_uint8(v, 0, 10), [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(window_uint8(v, 0, 10, invert=True), [255, 255, 128, 0, 0])
    with pytest.raises(ValueError):
        window_uint8(v, 10, 0)


def test_an_overlay_is_transparent_below_its_threshold_and_opaque_above():
    rgba = viewer.overlay_rgba(np.array([[0.1, 0.29, 0.3, 1.0]]), vmin=0.3)
    assert rgba[0, :2, 3].tolist() == [0, 0]
    assert (rgba[0, 2:, 3] > 200).all()
    assert not np.array_equal(rgba[0, 2, :3], rgba[0, 3, :3])  # colour follows the value


def test_an_outline_is_the_border_of_the_mask_not_its_inside():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    alpha = viewer.outline_rgba(mask)[..., 3] > 0
    expected = mask.copy()
    expected[2, 2] = False
    np.testing.assert_array_equal(alpha, expected)


def _sources(step):
    update, traces = step["args"]
    return [decode_png(s) for s in update["source"]], traces


def test_every_slider_step_shows_exactly_its_slice_in_every_plane(volumes):
    pet, maps, lesion = volumes
    fig = viewer.slice_viewer(pet, maps, window=(0, 10), outlines=lesion).to_dict()
    grey = window_uint8(pet, 0, 10, invert=True)
    sliders = {s["name"]: s for s in fig["layout"]["sliders"]}
    assert list(sliders) == ["axial", "coronal", "sagittal"]
    for plane, axis in viewer.PLANES.items():
        steps = sliders[plane]["steps"]
        assert len(steps) == SHAPE[axis]
        for i, step in enumerate(steps):
            images, traces = _sources(step)
            assert traces == [0, 1, 2, 3]  # the PET, overlays A and B, the outline
            np.testing.assert_array_equal(images[0], np.take(grey, i, axis=axis))
            np.testing.assert_array_equal(images[1][..., 3] > 0, np.take(maps["A"], i, axis=axis) >= 0.3)
            assert not images[2][..., 3].any(), "overlay B is below the threshold everywhere"
            assert images[3][..., 3].any() == np.take(lesion, i, axis=axis).any()


def test_the_viewer_opens_on_the_overlays_maximum_in_the_axial_plane(volumes):
    pet, maps, _ = volumes
    fig = viewer.slice_viewer(pet, maps).to_dict()
    sliders = fig["layout"]["sliders"]
    assert [s["active"] for s in sliders] == [6, 2, 3]
    assert [s["visible"] for s in sliders] == [True, False, False]
    np.testing.assert_array_equal(decode_png(fig["data"][0]["source"]), window_uint8(pet[6], 0, 10, invert=True))


def test_the_plane_buttons_show_that_planes_slider_and_its_slice(volumes):
    pet, maps, _ = volumes
    fig = viewer.slice_viewer(pet, maps).to_dict()
    planes = next(m for m in fig["layout"]["updatemenus"] if m["name"] == "plane")
    assert [b["label"] for b in planes["buttons"]] == ["axial", "coronal", "sagittal"]
    coronal = planes["buttons"][1]
    restyle, relayout, traces = coronal["args"]
    assert relayout["sliders[0].visible"] is False and relayout["sliders[1].visible"] is True
    assert relayout["sliders[2].visible"] is False
    assert relayout["yaxis.range"] == [SHAPE[0] - 0.5, -0.5] and relayout["xaxis.range"] == [-0.5, SHAPE[2] - 0.5]
    np.testing.assert_array_equal(decode_png(restyle["source"][0]), window_uint8(pet[:, 2, :], 0, 10, invert=True))


def test_the_overlay_menu_shows_one_models_saliency_or_none(volumes):
    pet, maps, lesion = volumes
    fig = viewer.slice_viewer(pet, maps, outlines=lesion).to_dict()
    menu = next(m for m in fig["layout"]["updatemenus"] if m["name"] == "overlay")
    shown = {b["label"]: b["args"][0]["visible"] for b in menu["buttons"]}
    assert shown == {"PET only": [True, False, False, True], "saliency: A": [True, True, False, True],
                     "saliency: B": [True, False, True, True]}
    assert [t["visible"] for t in fig["data"]] == [True, True, False, True]  # opens on the first model


def test_a_model_sized_viewer_stays_light():
    """A 75 x 50 x 50 PET with two sparse saliency maps: the page carries well under a megabyte."""
    rng = np.random.default_rng(0)
    d, h, w = np.mgrid[:75, :50, :50]
    body = ((h - 25) / 20) ** 2 + ((w - 25) / 22) ** 2 < 1
    pet = np.where(body, 1.5 + 0.3 * rng.standard_normal(body.shape), 0.0)
    blob = np.exp(-((d - 30) ** 2 + (h - 20) ** 2 + (w - 30) ** 2) / 30)
    fig = viewer.slice_viewer(pet, {"A": blob, "B": np.roll(blob, 10, axis=0)}, outlines=blob > 0.5)
    assert len(fig.to_json()) < 700_000


def test_mismatched_shapes_are_refused(volumes):
    pet, maps, _ = volumes
    with pytest.raises(ValueError, match="overlay 'A'"):
        viewer.slice_viewer(pet, {"A": maps["A"][:-1]})
    with pytest.raises(ValueError, match="outlines"):
        viewer.slice_viewer(pet, outlines=np.zeros((2, 2, 2), dtype=bool))


def test_the_image_browser_has_one_menu_entry_per_item_showing_its_own_images():
    rng = np.random.default_rng(2)
    items = {f"P{i}": {"left": rng.integers(0, 256, (6, 4), dtype=np.uint8),
                       "right": rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)} for i in range(3)}
    fig = viewer.image_browser(items, title="QC").to_dict()
    menu = fig["layout"]["updatemenus"][0]
    assert [b["label"] for b in menu["buttons"]] == ["P0", "P1", "P2"]
    for button in menu["buttons"]:
        restyle, relayout, traces = button["args"]
        assert traces == [0, 1]
        np.testing.assert_array_equal(decode_png(restyle["source"][0]), items[button["label"]]["left"])
        np.testing.assert_array_equal(decode_png(restyle["source"][1]), items[button["label"]]["right"])
        assert relayout["title.text"] == f"QC: {button['label']}"
    np.testing.assert_array_equal(decode_png(fig["data"][1]["source"]), items["P0"]["right"])
    with pytest.raises(ValueError, match="panels"):
        viewer.image_browser({"a": {"x": items["P0"]["left"]}, "b": {"y": items["P0"]["left"]}})
