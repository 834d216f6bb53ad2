"""Unit tests of the named steps of prrt_utils.io.dicom.load_series (issue 18: short functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from prrt_utils.io import dicom, discovery
from prrt_utils.io.images import InputError

AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # rows along +x, columns along +y: normal +z


def _slice(z: float, x: float = 0.0, **tags: object) -> tuple[int, Dataset, np.ndarray]:
    ds = Dataset()
    ds.ImagePositionPatient = [x, 0.0, z]
    ds.ImageOrientationPatient = AXIAL.tolist()
    ds.PixelSpacing = [2.0, 2.0]
    for key, value in tags.items():
        setattr(ds, key, value)
    return 0, ds, np.zeros((4, 4), dtype=np.int16)


def _geo(slices):
    return dicom._slice_geometry(slices, "CT", "P1", len(slices))


def test_slices_are_ordered_head_first_whatever_the_file_order() -> None:
    slices = [_slice(z) for z in (-10.0, 0.0, -5.0)]
    ordered, ipps, step = dicom._order_slices(slices, _geo(slices), np.array([0.0, 0.0, 1.0]), "CT", "P1")
    assert [ds.ImagePositionPatient[2] for _, ds, _ in ordered] == [0.0, -5.0, -10.0]
    assert ipps[:, 2].tolist() == [0.0, -5.0, -10.0]
    np.testing.assert_allclose(step, [0.0, 0.0, -5.0])


def test_one_slice_steps_by_its_spacing_against_the_normal() -> None:
    slices = [_slice(3.0, SliceThickness=4.0, SpacingBetweenSlices=2.5)]
    _, _, step = dicom._order_slices(slices, _geo(slices), np.array([0.0, 0.0, 1.0]), "CT", "P1")
    np.testing.assert_allclose(step, [0.0, 0.0, -2.5])  # SpacingBetweenSlices before SliceThickness


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ([5.0, 0.0, 5.0], "duplicated slice positions (1 duplicates, first at slice 2 of 4)"),
        ([5.0, 5.0, 10.0, 5.0], "missing slices: a gap of 10.00 mm after slice 3 of 5"),
        ([5.0, 5.0, 6.0, 5.0], "slice spacing is uneven (5.00 to 6.00 mm)"),
    ],
)
def test_uneven_steps_are_named(steps: list[float], problem: str) -> None:
    with pytest.raises(InputError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        dicom._require_even_steps(np.array(steps), "PET", "P1")


def test_even_steps_and_small_jitter_pass() -> None:
    dicom._require_even_steps(np.array([5.0, 5.2, 4.8, 5.0]), "PET", "P1")


def test_a_sheared_stack_is_refused_and_a_straight_one_passes() -> None:
    normal = np.array([0.0, 0.0, 1.0])
    z = -5.0 * np.arange(20)
    straight = np.stack([np.full(20, 0.2), np.zeros(20), z], axis=1)
    dicom._require_straight_stack(straight, normal, "CT", "P1")
    sheared = np.stack([0.1 * np.arange(20), np.zeros(20), z], axis=1)  # about 1.1 degrees
    with pytest.raises(InputError, match="drift sideways"):
        dicom._require_straight_stack(sheared, normal, "CT", "P1")


def test_slice_normal_is_row_cross_column_and_refuses_non_orthogonal_or_sagittal() -> None:
    np.testing.assert_allclose(dicom._slice_normal(AXIAL, "CT", "P1"), [0.0, 0.0, 1.0])
    with pytest.raises(InputError, match="not two orthogonal unit vectors"):
        dicom._slice_normal(np.array([1.0, 0.0, 0.0, 0.5, 0.5, 0.0]), "CT", "P1")
    with pytest.raises(InputError, match="describes sagittal slices"):
        dicom._slice_normal(np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]), "CT", "P1")


def test_geometry_mismatches_are_named_in_order() -> None:
    a, b = _slice(0.0), _slice(-5.0)
    b[1].PixelSpacing = [2.5, 2.5]
    with pytest.raises(InputError, match="inconsistent pixel spacing"):
        dicom._require_same_geometry(_geo([a, b]), "CT", "P1")
    c = _slice(-5.0)
    c[1].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.99, 0.14]
    with pytest.raises(InputError, match="inconsistent orientation"):
        dicom._require_same_geometry(_geo([a, c]), "CT", "P1")
    del c[1].ImagePositionPatient
    with pytest.raises(InputError, match="lacks ImagePositionPatient"):
        _geo([a, c])


def test_gantry_tilt_on_any_slice_is_refused() -> None:
    dicom._require_no_gantry_tilt([_slice(0.0, GantryDetectorTilt=0.0)], "CT", "P1")
    with pytest.raises(InputError, match="gantry tilt of 15 degrees"):
        dicom._require_no_gantry_tilt([_slice(0.0), _slice(-5.0, GantryDetectorTilt=-15.0)], "CT", "P1")


def test_slice_values_rescale_and_pad_ct_and_keep_raw() -> None:
    _, ds, _ = _slice(0.0, RescaleSlope=2.0, RescaleIntercept=-1000.0, PixelPaddingValue=-2000)
    stored = np.array([[0, 10], [-2000, 500]], dtype=np.int16)
    values, raw = dicom._slice_values([(0, ds, stored)], "CT", "P1", 1, keep_raw=True)
    np.testing.assert_array_equal(values[0], [[-1000.0, -980.0], [-1024.0, 0.0]])
    np.testing.assert_array_equal(raw[0], stored)
    values, raw = dicom._slice_values([(0, ds, stored)], "CT", "P1", 1, keep_raw=False)
    assert raw is None


def test_slice_values_need_rescale_tags() -> None:
    _, ct, _ = _slice(0.0, RescaleSlope=1.0)
    with pytest.raises(InputError, match="CT file 1 of 1 in the patient folder .* has no RescaleSlope/RescaleIntercept"):
        dicom._slice_values([(1, ct, np.zeros((2, 2), np.int16))], "CT", "P1", 1, keep_raw=False)
    _, pet, _ = _slice(0.0)
    with pytest.raises(InputError, match="PET file 1 of 1 in the patient folder .* has no RescaleSlope"):
        dicom._slice_values([(1, pet, np.zeros((2, 2), np.int16))], "PT", "P1", 1, keep_raw=False)


def test_examine_file_tells_empty_foreign_truncated_and_usable_files_apart(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    empty, text = tmp_path / "empty", tmp_path / "notes.txt"
    empty.write_bytes(b"")
    text.write_text("not DICOM")
    assert discovery._examine_file(empty, False) == ("unreadable", "is empty (0 bytes)", False)
    assert discovery._examine_file(text, False) == ("non_dicom", None, False)
    whole = get_testdata_file("CT_small.dcm")
    kind, ds, bare = discovery._examine_file(Path(whole), False)
    assert kind == "series" and ds.Modality == "CT" and not bare
    cut = tmp_path / "cut.dcm"
    data = Path(whole).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    kind, why, _ = discovery._examine_file(cut, False)
    assert kind == "unreadable" and why.startswith("is truncated (pixel data needs")
