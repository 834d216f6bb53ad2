"""Tests of prrt_utils.io.loading: DICOM/NIfTI PET/CT to SUVbw and HU, and every kind of bad input."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import dicom_factory as fac
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from prrt_utils.io import nifti
from prrt_utils.io.dicom import load_series
from prrt_utils.io.discovery import discover_series
from prrt_utils.io.images import InputError, Volume, reorient
from prrt_utils.io.loading import load_patient


def _names_and_uids(folder: Path) -> list[str]:
    """Every identifying string the factory planted, plus the UIDs actually written."""
    out = list(fac.FAKE_PHI.values())
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:
                continue
            out += [str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)]
    return out


# ---------------------------------------------------------------------------
# Answers nobody here chose: pydicom's bundled files and closed-form SUV
# ---------------------------------------------------------------------------


def test_hu_from_the_loader_equals_pydicoms_modality_lut_on_its_bundled_ct(tmp_path: Path) -> None:
    src = get_testdata_file("CT_small.dcm")
    shutil.copy(src, tmp_path / "slice")
    ds = pydicom.dcmread(src)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    (series,) = discover_series(tmp_path, "PRRT-900")
    vol = load_series(series, "PRRT-900")
    assert vol.modality == "CT" and vol.units == "HU" and vol.shape == (1, 128, 128)
    padding = ds.pixel_array == int(ds.PixelPaddingValue)
    np.testing.assert_array_equal(vol.array[0][~padding], expected[~padding])
    # voxel (0, 0, 0) sits at ImagePositionPatient; one column step moves along the row cosine
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], ipp, atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 2], [float(ds.PixelSpacing[1]), 0, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("decay", "use_datetime", "elapsed"),
    [("START", True, 3600.0), ("START", False, 3600.0), ("ADMIN", True, 0.0)],
)
def test_suv_equals_the_closed_form_of_weight_dose_and_decay(
    tmp_path: Path, decay: str, use_datetime: bool, elapsed: float
) -> None:
    geom = fac.Geometry(shape=(4, 6, 6), spacing=(3.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0))
    bqml = np.random.default_rng(1).uniform(100.0, 30000.0, geom.shape)
    head = fac.pet_header(weight_kg=82.5, dose_bq=180e6, decay=decay, use_datetime=use_datetime)
    paths = fac.write_series(tmp_path, bqml, "PT", geom, header=head)
    (series,) = discover_series(tmp_path, "PRRT-901")
    vol = load_series(series, "PRRT-901")
    expected = fac.quantised(bqml, paths) * 82.5 * 1000.0 / (180e6 * 2.0 ** (-elapsed / 4062.6))
    np.testing.assert_allclose(vol.array, expected, rtol=1e-5)
    assert vol.units == "SUVbw"
    assert vol.meta["half_life_s"] == pytest.approx(4062.6)


def test_injection_before_midnight_and_scan_after_counts_the_hours_across_midnight(tmp_path: Path) -> None:
    geom = fac.Geometry(shape=(2, 4, 4), spacing=(3.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0))
    head = fac.pet_header(injection_time="233000", series_time="003000", use_datetime=False)
    fac.write_series(tmp_path, np.full(geom.shape, 1000.0), "PT", geom, header=head)
    vol = load_series(discover_series(tmp_path, "PRRT-902")[0], "PRRT-902")
    assert vol.meta["injection_to_reference_s"] == pytest.approx(3600.0)


# ---------------------------------------------------------------------------
# Geometry: slice order, per-slice rescale, orientation
# ---------------------------------------------------------------------------


def test_slice_order_does_not_depend_on_file_names_or_instance_numbers(tmp_path: Path) -> None:
    geom = fac.Geometry(shape=(7, 5, 6), spacing=(2.5, 3.0, 2.0), origin=(-5.0, 3.0, 40.0))
    hu = np.random.default_rng(2).integers(-1000, 1500, geom.shape).astype(float)
    fac.write_series(
        tmp_path / "a", hu, "CT", geom, intercept=-1024, names="sequential", instance="ascending"
    )
    fac.write_series(
        tmp_path / "b", hu, "CT", geom, intercept=-1024, names="reversed", instance="shuffled", seed=5
    )
    fac.write_series(
        tmp_path / "c", hu, "CT", geom, intercept=-1024, names="random", instance="descending", seed=6
    )
    vols = [load_series(discover_series(tmp_path / k, "PRRT-903")[0], "PRRT-903") for k in "abc"]
    for v in vols:
        np.testing.assert_array_equal(v.array, hu.astype(np.float32))
        np.testing.assert_allclose(v.affine, geom.affine(), atol=1e-5)


def test_rescale_slope_and_intercept_are_applied_slice_by_slice(tmp_path: Path) -> None:
    geom = fac.Geometry(shape=(5, 4, 4), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    bqml = np.stack([np.full((4, 4), 10.0**k) for k in range(5)])  # 1 .. 10^4 Bq/ml
    slopes = [10.0**k / 20000.0 for k in range(5)]  # each slice its own scale
    fac.write_series(tmp_path, bqml, "PT", geom, slopes=slopes, header=fac.pet_header(decay="ADMIN"))
    vol = load_series(discover_series(tmp_path, "PRRT-904")[0], "PRRT-904")
    factor = 70.0 * 1000.0 / 150e6
    np.testing.assert_allclose(vol.array, bqml * factor, rtol=1e-4)
    assert vol.meta["rescale_slope_range"] == pytest.approx([slopes[0], slopes[-1]])


def test_reorientation_keeps_every_voxel_at_its_lps_position() -> None:
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(4, 5, 6))
    aff = np.eye(4)
    aff[:3, :3] = np.array([[0, 0, -2.0], [3.0, 0, 0], [0, 1.5, 0]])  # a scrambled, flipped stack
    aff[:3, 3] = [10.0, -20.0, 5.0]
    out, out_aff = reorient(arr, aff)
    world = {tuple(np.round(aff @ [*idx, 1], 6)[:3]): arr[idx] for idx in np.ndindex(arr.shape)}
    for idx in np.ndindex(out.shape):
        assert world[tuple(np.round(out_aff @ [*idx, 1], 6)[:3])] == out[idx]
    # canonical: d goes to the feet (-z), h to posterior (+y), w to the patient's left (+x)
    assert out_aff[2, 0] < 0 and out_aff[1, 1] > 0 and out_aff[0, 2] > 0


def test_a_feet_first_dicom_series_and_the_same_image_as_nifti_load_identically(tmp_path: Path) -> None:
    geom = fac.Geometry(
        shape=(6, 5, 4),
        spacing=(4.0, 3.0, 2.0),
        origin=(20.0, 30.0, -100.0),
        row_dir=(-1.0, 0.0, 0.0),
        col_dir=(0.0, -1.0, 0.0),
        feet_first=True,
    )
    hu = np.random.default_rng(4).integers(-900, 900, geom.shape).astype(float)
    fac.write_series(tmp_path / "dcm", hu, "CT", geom, intercept=-1024)
    dcm = load_series(discover_series(tmp_path / "dcm", "PRRT-905")[0], "PRRT-905")
    fac.write_nifti(tmp_path / "nii" / "ct.nii.gz", hu.astype(np.float32), geom.affine())
    fac.write_nifti(tmp_path / "nii" / "pet.nii.gz", np.ones(geom.shape, np.float32), geom.affine())
    (tmp_path / "nii" / "pet.json").write_text(json.dumps({"units": "SUVbw"}))
    nii = load_patient(tmp_path / "nii", "PRRT-905").ct
    np.testing.assert_allclose(nii.affine, dcm.affine, atol=1e-4)
    np.testing.assert_array_equal(nii.array, dcm.array)
    assert dcm.affine[2, 0] < 0  # head first after loading, although stored feet first


def test_nifti_pet_in_bqml_is_converted_with_the_sidecar(tmp_path: Path) -> None:
    geom = fac.Geometry(shape=(3, 4, 4), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    bqml = np.full(geom.shape, 5000.0, np.float32)
    fac.write_nifti(tmp_path / "pet.nii.gz", bqml, geom.affine())
    fac.write_nifti(tmp_path / "ct.nii.gz", np.zeros(geom.shape, np.int16), geom.affine(), (1.0, -1024.0))
    side = {
        "units": "Bq/ml",
        "patient_weight_kg": 60.0,
        "injected_dose_bq": 1.2e8,
        "injection_to_scan_s": 3000.0,
        "nuclide": "Ga-68",  # no nuclide is assumed (issue 16: an F-18 study got SUV +19 %)
    }
    (tmp_path / "pet.json").write_text(json.dumps(side))
    im = load_patient(tmp_path, "PRRT-906")
    np.testing.assert_allclose(im.pet.array, 5000.0 * 60000.0 / (1.2e8 * 2 ** (-3000 / 4062.6)), rtol=1e-6)
    np.testing.assert_array_equal(im.ct.array, -1024.0)  # scl_slope/scl_inter applied


# ---------------------------------------------------------------------------
# Series discovery and choice
# ---------------------------------------------------------------------------


def test_pet_and_ct_in_one_folder_are_told_apart_by_modality_and_series_uid(tmp_path: Path) -> None:
    truth = fac.write_patient(tmp_path / "tmp")
    (tmp_path / "one").mkdir()
    for p in [q for q in (tmp_path / "tmp").rglob("*") if q.is_file()]:
        shutil.move(p, tmp_path / "one" / f"{p.parent.name}-{p.name}")
    (tmp_path / "one" / "README.txt").write_text("not a DICOM file")
    series = discover_series(tmp_path / "one", "PRRT-907")
    assert sorted(s.modality for s in series) == ["CT", "PT"]
    assert series.n_non_dicom == 1
    im = load_patient(tmp_path / "one", "PRRT-907")
    np.testing.assert_allclose(im.pet.array, truth["suv"], rtol=1e-4, atol=1e-4)
    assert im.pet.meta["files_skipped"]["non_dicom"] == 1


def test_the_attenuation_corrected_pet_is_chosen_over_a_non_corrected_one(tmp_path: Path) -> None:
    fac.write_patient(tmp_path)
    g = fac.PET_GEOM
    nac = fac.pet_header()
    nac["CorrectedImage"] = ["DECY"]
    fac.write_series(tmp_path / "nac", np.ones(g.shape) * 100, "PT", g, header=nac, series_key="nac")
    im = load_patient(tmp_path, "PRRT-908")
    assert im.pet.meta["series_choice"].startswith("1 of 2 PET series: attenuation-corrected")
    assert im.pet.array.max() > 5  # the AC series holds the hot lesion, the NAC one is flat


# ---------------------------------------------------------------------------
# Bad inputs: each a clear InputError naming the patient and the problem
# ---------------------------------------------------------------------------


def _truncate(folder: Path, n_bytes: int) -> None:
    p = sorted((folder / "pet").iterdir())[3]
    p.write_bytes(p.read_bytes()[:n_bytes])


def _singular_nifti(folder: Path) -> None:
    geom = fac.Geometry(shape=(3, 4, 4), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    broken = geom.affine()
    broken[:3, 2] = broken[:3, 1]  # two equal columns: singular
    fac.write_nifti(folder / "pet.nii.gz", np.ones(geom.shape, np.float32), broken)
    fac.write_nifti(folder / "ct.nii.gz", np.zeros(geom.shape, np.float32), geom.affine())
    (folder / "pet.json").write_text(json.dumps({"units": "SUVbw"}))


def _no_pet(folder: Path) -> None:
    fac.write_patient(folder)
    shutil.rmtree(folder / "pet")


def _missing_slice(folder: Path) -> None:
    fac.write_patient(folder)
    sorted((folder / "ct").iterdir(), key=lambda p: -float(pydicom.dcmread(p).ImagePositionPatient[2]))[10].unlink()


def _two_pet_series(folder: Path) -> None:
    fac.write_patient(folder)
    fac.write_series(
        folder / "pet",
        fac.patient_values(fac.PET_GEOM, "PT") * 1e3,
        "PT",
        fac.PET_GEOM,
        header=fac.pet_header(),
        series_key="second-recon",
        seed=9,
    )


def _duplicate_position(ds, d):
    if d == 7:
        ds.ImagePositionPatient = [f"{v:.6f}" for v in fac.CT_GEOM.positions()[6]]


def _wrong_spacing(ds, d):
    if d == 4:
        ds.PixelSpacing = ["9", "9"]


def _tilt_tag(ds, d):
    ds.GantryDetectorTilt = "15"


def _tilt_geometry(ds, d):
    p = fac.CT_GEOM.positions()[d]
    ds.ImagePositionPatient = [
        f"{p[0]:.6f}",
        f"{p[1] + d * 20.0 * np.tan(np.radians(12)):.6f}",
        f"{p[2]:.6f}",
    ]


def _no_rescale(ds, d):
    del ds.RescaleSlope
    del ds.RescaleIntercept


def _no_weight(ds, d):
    del ds.PatientWeight


_BUILT = {
    "nifti singular affine": _singular_nifti,
    "no pet": _no_pet,
    "missing slice": _missing_slice,
    "two pet series mixed": _two_pet_series,
}
"""Cases written whole by their own function."""

_WRITE_KW = {
    "duplicated positions": {"ct_edit": _duplicate_position},
    "inconsistent spacing": {"ct_edit": _wrong_spacing},
    "gantry tilt tag": {"ct_edit": _tilt_tag},
    "gantry tilt geometry": {"ct_edit": _tilt_geometry},
    "ct without rescale": {"ct_edit": _no_rescale},
    "pet in counts": {"pet_header_kw": {"units": "CNTS"}},
    "missing weight": {"weight_kg": 70.0, "pet_edit": _no_weight},
}
"""Cases that are a normal patient written with other headers (``dicom_factory.write_patient`` keywords)."""

_DAMAGE = {
    "truncated file": lambda folder: _truncate(folder, 3000),
    "truncated header": lambda folder: _truncate(folder, 400),
    "zero-byte file": lambda folder: (folder / "pet" / "empty.dcm").write_bytes(b""),
}
"""Cases that are a normal patient damaged after writing."""


def _bad_patient(tmp: Path, case: str) -> Path:
    folder = tmp / "PRRT-013"
    if case in _BUILT:
        _BUILT[case](folder)
        return folder
    fac.write_patient(folder, **_WRITE_KW.get(case, {}))
    if case in _DAMAGE:
        _DAMAGE[case](folder)
    return folder


BAD = {
    "truncated file": "truncated",
    "truncated header": "truncated",
    "zero-byte file": "empty (0 bytes)",
    "two pet series mixed": "2 PET series of the same kind",
    "missing slice": "missing slices",
    "duplicated positions": "duplicated slice positions",
    "inconsistent spacing": "inconsistent pixel spacing",
    "gantry tilt tag": "gantry tilt",
    "gantry tilt geometry": "gantry tilt",
    "ct without rescale": "RescaleSlope/RescaleIntercept",
    "pet in counts": "counts (Units CNTS)",
    "missing weight": "PatientWeight is missing",
    "nifti singular affine": "singular",
    "no pet": "no PET series",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_input_raises_an_input_error_naming_patient_and_problem(tmp_path: Path, case: str) -> None:
    folder = _bad_patient(tmp_path, case)
    with pytest.raises(InputError) as err:
        load_patient(folder, "PRRT-013")
    msg = str(err.value)
    assert msg.startswith("patient PRRT-013: ")
    assert BAD[case] in msg, msg
    assert err.value.patient_id == "PRRT-013" and err.value.problem in msg
    assert str(tmp_path) not in msg and not any(s in msg for s in fac.FAKE_PHI.values())


def test_a_truncated_file_is_named_by_its_position_not_its_path(tmp_path: Path) -> None:
    folder = _bad_patient(tmp_path, "truncated file")
    with pytest.raises(InputError, match=r"file \d+ of 60 in the patient folder"):
        load_patient(folder, "PRRT-013")


def test_skip_mode_drops_an_unreadable_file_and_then_reports_the_gap_it_leaves(tmp_path: Path) -> None:
    folder = _bad_patient(tmp_path, "zero-byte file")
    series = discover_series(folder, "PRRT-013", on_error="skip")
    assert series.n_unreadable == 1 and {s.modality for s in series} == {"PT", "CT"}
    folder2 = _bad_patient(tmp_path / "b", "truncated file")
    with pytest.raises(InputError, match="missing slices"):
        load_patient(folder2, "PRRT-013", on_error="skip")


def test_input_error_survives_a_process_pool() -> None:
    err = pickle.loads(pickle.dumps(InputError("PRRT-007", "PET in counts")))
    assert str(err) == "patient PRRT-007: PET in counts" and err.problem == "PET in counts"


def test_no_identifying_data_reaches_volume_meta(tmp_path: Path) -> None:
    fac.write_patient(tmp_path)
    im = load_patient(tmp_path, "PRRT-014", keep_raw=True)
    blob = json.dumps([im.pet.meta, im.ct.meta], default=str)
    for secret in _names_and_uids(tmp_path):
        assert secret not in blob
    assert im.ct.raw is not None and im.ct.raw.min() >= 0  # stored values, intercept -1024 not applied


# ---------------------------------------------------------------------------
# Integration with the synthetic cohort (prrt_utils.synthetic)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["dicom", "nifti"])
def test_loaded_suv_equals_the_synthetic_ground_truth_voxel_by_voxel(
    tmp_path: Path, image_format: str
) -> None:
    from prrt_utils import synthetic as synth
    cfg = synth.SynthConfig(
        n_patients=2, pet_matrix=24, ct_matrix=32, slice_mm=25.0, image_format=image_format
    )
    out = synth.generate_cohort(cfg, tmp_path / "data", progress=False)
    phi = json.loads((out / "ground_truth" / "phi.json").read_text())
    for pid in ("PRRT-001", "PRRT-002"):
        im = load_patient(out / "imaging" / pid, pid)
        gt_img, gt_lps = nifti._nifti(out / "ground_truth" / "suv" / f"{pid}.nii.gz", pid)
        perm = np.zeros((4, 4))
        perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
        gt, gt_aff = reorient(
            np.transpose(np.asarray(gt_img.get_fdata(dtype=np.float32)), (2, 1, 0)), gt_lps @ perm
        )
        np.testing.assert_allclose(im.pet.affine, gt_aff, atol=1e-3)
        np.testing.assert_allclose(im.pet.array, gt, rtol=1e-5, atol=1e-5)
        assert -1024.0 <= im.ct.array.min() and im.ct.array.max() < 3071.0
        blob = json.dumps([im.pet.meta, im.ct.meta], default=str)
        assert not any(s in blob for s in phi)


def test_volume_spacing_is_the_length_of_the_affine_columns() -> None:
    aff = np.diag([-5.0, 2.0, 3.0, 1.0])
    vol = Volume(np.zeros((2, 2, 2), np.float32), aff, "CT", "HU", {})
    assert vol.spacing == (5.0, 2.0, 3.0)


def test_compressed_pixel_data_are_decoded_by_the_shipped_plugins_and_a_missing_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    # pydicom's own JPEG-LS file (Pillow cannot decode it; pylibjpeg-libjpeg, a dependency, can)
    jls = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert jls.file_meta.TransferSyntaxUID == JPEGLSLossless
    np.testing.assert_array_equal(jls.pixel_array, ref.pixel_array)

    folder = tmp_path / "p"
    fac.write_patient(folder)
    plain = load_patient(folder, "PRRT-013").ct.array
    for path in sorted((folder / "ct").iterdir()):
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(load_patient(folder, "PRRT-013").ct.array, plain)  # lossless, HU for HU

    # as on a machine without the plugins: the syntax and the packages to install are named
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})
    with pytest.raises(InputError) as err:
        load_patient(folder, "PRRT-013")
    assert "compressed as JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90)" in str(err.value)
    assert "no decoder for it is installed (install one of: pylibjpeg" in str(err.value)
