"""Tests of prrt_utils.data.preprocess: physical-space resampling, artefact rules, the cached stage."""

from __future__ import annotations

import json
from pathlib import Path

import dicom_factory as fac
import numpy as np
import pandas as pd
import pydicom
import pytest

from prrt_utils.data import preprocess, qc
from prrt_utils.data.grid import TargetGrid, body_mask, resample
from prrt_utils.data.preprocess import (
    PreprocessConfig,
    PreprocessError,
    load_volumes,
    preprocess_patient,
    run_preprocessing,
)
from prrt_utils.data.qc import harmonisation_summary
from prrt_utils.io import store
from prrt_utils.io.figures import PALETTE
from prrt_utils.io.images import InputError, PatientImages, Volume

CENTRE = np.array([30.0, -20.0, -100.0])  # LPS mm


def _target(origin=(-100.0, -100.0, 0.0), shape=(20, 20, 20), step=10.0) -> TargetGrid:
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 1], aff[2, 0], aff[3, 3] = step, step, -step, 1.0
    aff[:3, 3] = origin
    return TargetGrid(aff, shape, "test")


def _centroid(values: np.ndarray, grid: TargetGrid) -> np.ndarray:
    w = values / values.sum()
    return np.tensordot(w, grid.centres(), axes=([0, 1, 2], [0, 1, 2]))


def test_config_round_trips_through_yaml_and_spacing_is_10_mm() -> None:
    cfg = PreprocessConfig()
    assert PreprocessConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.spacing_mm == (10.0, 10.0, 10.0)
    assert cfg.replace(on_error="stop").hash() != cfg.hash()
    with pytest.raises(ValueError, match="on_error"):
        PreprocessConfig(on_error="ignore")


# ---------------------------------------------------------------------------
# Resampling in physical space
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "geom",
    [
        fac.Geometry(shape=(60, 50, 50), spacing=(4.0, 4.0, 4.0), origin=(-70.0, -120.0, 20.0)),
        # other spacings, other origin, stored feet first with flipped in-plane axes
        fac.Geometry(
            shape=(46, 80, 70),
            spacing=(5.3, 2.7, 3.1),
            origin=(140.0, 90.0, -230.0),
            row_dir=(-1.0, 0.0, 0.0),
            col_dir=(0.0, -1.0, 0.0),
            feet_first=True,
        ),
        # oblique: rotated 30 degrees about z (Gaussian pre-filter and interpolation path)
        fac.Geometry(
            shape=(40, 64, 64),
            spacing=(5.0, 4.0, 4.0),
            origin=(-40.0, -190.0, 0.0),
            row_dir=(np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0),
            col_dir=(-np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0),
        ),
    ],
    ids=["4mm", "anisotropic-feet-first-flipped", "oblique-30-degrees"],
)
def test_a_ball_of_known_suv_lands_at_its_lps_position_on_the_target_grid(geom: fac.Geometry) -> None:
    radius, suv = 25.0, 10.0
    vol = fac.ball(geom, CENTRE, radius, suv, 0.0).astype(np.float32)
    grid = _target()
    out = resample(vol, geom.affine(), grid, fill=0.0)
    # a flipped axis or a half-voxel (5 mm) shift would move the centroid far more than 1 mm
    np.testing.assert_allclose(_centroid(out, grid), CENTRE, atol=1.0)
    total = out.sum() * 1000.0  # SUV x ml
    assert total == pytest.approx(suv * 4.0 / 3.0 * np.pi * radius**3, rel=0.03)
    k = np.unravel_index(np.argmax(out), out.shape)
    np.testing.assert_allclose(grid.centres()[k], CENTRE, atol=10.0)


def test_the_same_ball_from_two_grids_gives_the_same_resampled_volume() -> None:
    g1 = fac.Geometry(shape=(60, 50, 50), spacing=(4.0, 4.0, 4.0), origin=(-70.0, -120.0, 20.0))
    g2 = fac.Geometry(shape=(50, 70, 70), spacing=(5.0, 3.0, 3.0), origin=(-74.0, -121.0, 22.0))
    grid = _target()
    a = resample(fac.ball(g1, CENTRE, 30.0, 8.0, 1.0), g1.affine(), grid, fill=1.0)
    b = resample(fac.ball(g2, CENTRE, 30.0, 8.0, 1.0), g2.affine(), grid, fill=1.0)
    assert np.abs(a - b).max() < 0.6  # SUV; both approximate the 10 mm box average of the same ball
    assert np.abs(a - b).mean() < 0.02


def test_antialiasing_keeps_a_small_lesions_activity_wherever_the_grid_cuts_it() -> None:
    geom = fac.Geometry(shape=(40, 40, 40), spacing=(2.0, 2.0, 2.0), origin=(-40.0, -40.0, 40.0))
    grid = _target(origin=(-35.0, -35.0, 35.0), shape=(8, 8, 8))
    rng = np.random.default_rng(0)
    totals = {True: [], False: []}
    for _ in range(8):
        c = rng.uniform(-5.0, 5.0, 3)
        vol = fac.ball(geom, c, 6.0, 20.0, 0.0)
        for aa in (True, False):
            totals[aa].append(resample(vol, geom.affine(), grid, antialias=aa).sum() * 1000.0)
    truth = 20.0 * 4.0 / 3.0 * np.pi * 6.0**3
    smooth, point = np.array(totals[True]), np.array(totals[False])
    np.testing.assert_allclose(smooth, truth, rtol=0.05)
    assert smooth.std() < 0.3 * point.std()  # point sampling depends on where the grid falls


# ---------------------------------------------------------------------------
# Artefact rules, anchoring, PET/CT alignment
# ---------------------------------------------------------------------------


def _images(pid: str = "PRRT-020") -> tuple[PatientImages, fac.Geometry, fac.Geometry]:
    pet_g, ct_g = fac.PET_GEOM, fac.CT_GEOM
    pet = fac.patient_values(pet_g, "PT").astype(np.float32)
    ct = fac.patient_values(ct_g, "CT").astype(np.float32)
    return (
        PatientImages(
            pid, Volume(pet, pet_g.affine(), "PT", "SUVbw", {}), Volume(ct, ct_g.affine(), "CT", "HU", {})
        ),
        pet_g,
        ct_g,
    )


def test_body_mask_drops_the_bed_and_keeps_the_lungs() -> None:
    ct_g = fac.CT_GEOM
    hu = fac.patient_values(ct_g, "CT")
    c = ct_g.centres()
    mask = body_mask(hu)
    bed = (c[..., 1] >= 130) & (c[..., 1] <= 140) & (np.abs(c[..., 0]) <= 180)
    lung = hu == -850.0
    assert not (mask & bed).any()
    assert (mask[lung]).all() and lung.any()


def test_pet_and_ct_land_on_the_same_grid_and_are_aligned() -> None:
    # one ball in soft tissue, seen by a PET and a CT on different grids
    centre = np.array([40.0, 10.0, -250.0])
    pet_g, ct_g = fac.PET_GEOM, fac.CT_GEOM
    body_pet = np.where(fac.patient_values(pet_g, "CT") > -500, 1.0, 0.0)
    body_ct = np.where(fac.patient_values(ct_g, "CT") > -900, 0.0, -1000.0)
    pet = body_pet + fac.ball(pet_g, centre, 20.0, 9.0, 0.0)
    ct = body_ct + fac.ball(ct_g, centre, 20.0, 300.0, 0.0)
    im = PatientImages(
        "PRRT-020",
        Volume(pet.astype(np.float32), pet_g.affine(), "PT", "SUVbw", {}),
        Volume(ct.astype(np.float32), ct_g.affine(), "CT", "HU", {}),
    )
    out = preprocess_patient(im, PreprocessConfig().replace(anchor="body_top"))
    assert out.pet.shape == out.ct.shape == (75, 50, 50)
    assert out.pet.dtype == out.ct.dtype == np.float32
    np.testing.assert_allclose(_centroid(np.clip(out.pet - 1.0, 0, None), out.grid), centre, atol=1.5)
    np.testing.assert_allclose(_centroid(np.clip(out.ct - 0.0, 0, None), out.grid), centre, atol=1.5)


def test_the_box_starts_above_the_lung_apex_and_is_centred_on_the_body() -> None:
    images, _, _ = _images()
    cfg = PreprocessConfig()
    out = preprocess_patient(images, cfg)
    top = out.grid.affine[2, 3] + 5.0  # upper face of the first slice (z of its centre + half a voxel)
    # lungs reach z = 0; the CT samples them every 20 mm, so the apex is found within one slice
    assert 0.0 - 20.0 + cfg.top_margin_mm <= top <= 0.0 + cfg.top_margin_mm
    centre_xy = out.grid.affine[:2, 3] + np.array([245.0, 245.0])
    np.testing.assert_allclose(centre_xy, [0.0, 0.0], atol=2.0)
    assert out.facts["anchor"] == "lung_apex"


def test_ct_is_clipped_pet_negatives_are_zero_and_nothing_survives_outside_the_body() -> None:
    images, pet_g, ct_g = _images()
    ct = images.ct.array.copy()
    ct[15, 24, 24] = 8000.0  # metal
    pet = images.pet.array.copy()
    pet[15, 20, 20] = -50.0  # reconstruction undershoot inside the body
    pet[15, 0, 0] = 30.0  # hot voxel in the air outside the body
    im = PatientImages(
        "PRRT-021", Volume(pet, pet_g.affine(), "PT", "SUVbw", {}), Volume(ct, ct_g.affine(), "CT", "HU", {})
    )
    out = preprocess_patient(im, PreprocessConfig())
    assert out.ct.min() >= -1024.0 and out.ct.max() <= 3071.0
    assert out.pet.min() >= 0.0
    c = out.grid.centres()
    outside = (c[..., 0] / 150.0) ** 2 + (c[..., 1] / 110.0) ** 2 > 1.4
    assert out.pet[outside].max() == 0.0
    assert (out.ct[outside] == -1024.0).all()  # the bed (200 HU) is gone


def test_a_series_that_misses_most_of_the_box_is_refused() -> None:
    images, pet_g, _ = _images()
    tiny = fac.Geometry(shape=(3, 10, 10), spacing=(20.0, 12.0, 12.0), origin=(-54.0, -54.0, -100.0))
    im = PatientImages(
        "PRRT-022", Volume(np.ones(tiny.shape, np.float32), tiny.affine(), "PT", "SUVbw", {}), images.ct
    )
    with pytest.raises(InputError, match="PRRT-022: PET covers only"):
        preprocess_patient(im, PreprocessConfig())


# ---------------------------------------------------------------------------
# The stage: outputs, exclusions, cache
# ---------------------------------------------------------------------------


@pytest.fixture()
def imaging(tmp_path: Path) -> Path:
    root = tmp_path / "imaging"
    fac.write_patient(root / "PRRT-001", weight_kg=60.0, key="a")
    fac.write_patient(root / "PRRT-002", weight_kg=90.0, ct_intercept=0.0, key="b", seed=3)
    fac.write_patient(root / "PRRT-003", pet_header_kw={"units": "CNTS"}, key="c")  # bad
    fac.write_patient(root / "PRRT-004", key="d", seed=7)
    (root / "PRRT-004" / "ct" / "zero.dcm").write_bytes(b"")  # bad
    return root


def test_skip_mode_preprocesses_the_good_and_lists_the_bad_with_their_reasons(
    imaging: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    index = run_preprocessing(
        PreprocessConfig(),
        ["PRRT-001", "PRRT-002", "PRRT-003", "PRRT-004", "PRRT-005"],
        imaging,
        work,
        progress=False,
    )
    assert list(index["patient_id"]) == ["PRRT-001", "PRRT-002", "PRRT-003", "PRRT-004", "PRRT-005"]
    assert list(index["status"]) == ["ok", "ok", "excluded", "excluded", "excluded"]
    out = work / "preprocessed"
    excl = pd.read_csv(out / "exclusions.csv")
    assert list(excl.columns) == ["patient_id", "stage", "reason"] and set(excl["stage"]) == {"preprocess"}
    reasons = dict(zip(excl["patient_id"], excl["reason"], strict=True))
    assert "counts" in reasons["PRRT-003"] and "empty" in reasons["PRRT-004"]
    assert "not found" in reasons["PRRT-005"]
    assert sorted(p.name for p in out.glob("*.npz")) == ["PRRT-001.npz", "PRRT-002.npz"]
    for row in index[index["status"] == "ok"].itertuples():
        assert store.sha256_file(out / row.file) == row.sha256
    assert PreprocessConfig.from_yaml(out / "config.yaml") == PreprocessConfig()
    vols = load_volumes(work, ["PRRT-002", "PRRT-001"])
    assert vols["pet"].shape == vols["ct"].shape == (2, 1, 75, 50, 50)
    assert vols["pet"].dtype == np.float32
    # ordered as asked: PRRT-001 (60 kg) and PRRT-002 (90 kg) hold the same SUV, so compare with the files
    with np.load(out / "PRRT-002.npz") as z:
        np.testing.assert_array_equal(vols["pet"][0, 0], z["pet"])
    with pytest.raises(PreprocessError, match="PRRT-003: excluded at preprocessing"):
        load_volumes(work, ["PRRT-003"])
    qc = pd.read_csv(out / "qc.csv")
    text = qc.to_csv() + (out / "index.csv").read_text() + (out / "exclusions.csv").read_text()
    assert not any(s in text for s in fac.FAKE_PHI.values()) and str(tmp_path) not in text


def test_harmonised_intensities_agree_across_patients_stored_with_other_rescale_tags(
    imaging: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    run_preprocessing(PreprocessConfig(), ["PRRT-001", "PRRT-002"], imaging, work, progress=False)
    vols = load_volumes(work, ["PRRT-001", "PRRT-002"])
    np.testing.assert_allclose(vols["ct"][0], vols["ct"][1], atol=1e-3)  # intercepts -1024 vs 0
    np.testing.assert_allclose(vols["pet"][0], vols["pet"][1], atol=2e-3)  # 60 vs 90 kg, same SUV
    summary = harmonisation_summary(imaging, ["PRRT-001", "PRRT-002"])
    s = summary.to_frame().set_index(["patient_id", "quantity"])
    assert s.loc[("PRRT-001", "CT stored value"), "median"] - s.loc[
        ("PRRT-002", "CT stored value"), "median"
    ] == pytest.approx(1024.0)
    assert s.loc[("PRRT-001", "HU"), "median"] == pytest.approx(s.loc[("PRRT-002", "HU"), "median"])
    ratio = s.loc[("PRRT-002", "PET Bq/ml"), "p99"] / s.loc[("PRRT-001", "PET Bq/ml"), "p99"]
    assert ratio == pytest.approx(60.0 / 90.0, rel=1e-3)  # Bq/ml scale with dose / weight ...
    assert s.loc[("PRRT-001", "SUVbw"), "p99"] == pytest.approx(
        s.loc[("PRRT-002", "SUVbw"), "p99"], rel=1e-3
    )  # ... SUV does not
    fig = qc.histogram_figure(summary)
    assert len(fig.data) == 8  # 4 quantities x 2 patients, each patient in one colour of the book's palette
    assert {t.line.color for t in fig.data} == {PALETTE[0], PALETTE[1]}


def test_stop_mode_stops_at_the_first_bad_patient_with_its_message(imaging: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^patient PRRT-003: PET is stored in counts"):
        run_preprocessing(
            PreprocessConfig(on_error="stop"),
            ["PRRT-001", "PRRT-003", "PRRT-002"],
            imaging,
            tmp_path / "w",
            progress=False,
        )
    assert not (tmp_path / "w" / "preprocessed" / "PRRT-003.npz").exists()


def test_a_rerun_skips_finished_patients_and_redoes_only_changed_inputs(
    imaging: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    ids = ["PRRT-001", "PRRT-002", "PRRT-003"]
    first = run_preprocessing(PreprocessConfig(), ids, imaging, work, progress=False)
    calls: list[str] = []
    real = preprocess.preprocess_patient

    def counting(images, cfg):
        calls.append(images.patient_id)
        return real(images, cfg)

    monkeypatch.setattr(preprocess, "preprocess_patient", counting)
    again = run_preprocessing(PreprocessConfig(), ids, imaging, work, progress=False)
    assert calls == [] and again.equals(first)
    # same file sizes, one changed pixel: the content hash sees it
    f = sorted((imaging / "PRRT-002" / "pet").iterdir())[5]
    data = bytearray(f.read_bytes())
    data[-2] ^= 0x01
    f.write_bytes(bytes(data))
    run_preprocessing(PreprocessConfig(), ids, imaging, work, progress=False)
    assert calls == ["PRRT-002"]
    run_preprocessing(PreprocessConfig(top_margin_mm=40.0), ids, imaging, work, progress=False)
    assert calls == ["PRRT-002", "PRRT-001", "PRRT-002"]  # a new config redoes everyone who could be loaded


def test_an_interrupted_run_resumes_where_it_stopped(
    imaging: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    real = preprocess.preprocess_patient

    def dies_on_second(images, cfg):
        if images.patient_id == "PRRT-002":
            raise KeyboardInterrupt
        return real(images, cfg)

    monkeypatch.setattr(preprocess, "preprocess_patient", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_preprocessing(PreprocessConfig(), ["PRRT-001", "PRRT-002"], imaging, work, progress=False)
    assert (work / "preprocessed" / "PRRT-001.npz").exists()
    assert not list((work / "preprocessed").glob("*.part"))
    done: list[str] = []

    def records(images, cfg):
        done.append(images.patient_id)
        return real(images, cfg)

    monkeypatch.setattr(preprocess, "preprocess_patient", records)
    index = run_preprocessing(PreprocessConfig(), ["PRRT-001", "PRRT-002"], imaging, work, progress=False)
    assert done == ["PRRT-002"] and list(index["status"]) == ["ok", "ok"]


def test_a_patient_whose_inputs_turn_bad_loses_its_old_result(imaging: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    run_preprocessing(PreprocessConfig(), ["PRRT-001"], imaging, work, progress=False)
    assert (work / "preprocessed" / "PRRT-001.npz").exists()
    files = sorted(
        (imaging / "PRRT-001" / "ct").iterdir(),
        key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]),
    )
    files[10].unlink()  # a slice in the middle of the stack
    index = run_preprocessing(PreprocessConfig(), ["PRRT-001"], imaging, work, progress=False)
    assert index.loc[0, "status"] == "excluded" and "missing slices" in index.loc[0, "reason"]
    assert not (work / "preprocessed" / "PRRT-001.npz").exists()


def test_cohort_csv_patients_without_imaging_are_listed_not_searched(imaging: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort.csv"
    pd.DataFrame({"patient_id": ["PRRT-001", "PRRT-009"], "has_imaging": [True, False]}).to_csv(
        cohort, index=False
    )
    index = run_preprocessing(
        PreprocessConfig(on_error="stop"), cohort, imaging, tmp_path / "w", progress=False
    )
    assert list(index["status"]) == ["ok", "excluded"] and "has_imaging is false" in index.loc[1, "reason"]
    with pytest.raises(PreprocessError, match="run the cohort stage first"):
        run_preprocessing(
            PreprocessConfig(), tmp_path / "absent.csv", imaging, tmp_path / "w", progress=False
        )


def test_two_runs_and_two_worker_processes_write_identical_files(imaging: Path, tmp_path: Path) -> None:
    ids = ["PRRT-001", "PRRT-002", "PRRT-003"]
    a = run_preprocessing(PreprocessConfig(), ids, imaging, tmp_path / "a", progress=False)
    b = run_preprocessing(PreprocessConfig(), ids, imaging, tmp_path / "b", progress=False, n_jobs=2)
    assert a.equals(b)
    assert (tmp_path / "a" / "preprocessed" / "qc.csv").read_text() == (
        tmp_path / "b" / "preprocessed" / "qc.csv"
    ).read_text()


def test_qc_figure_shows_mip_slices_and_overlay(imaging: Path, tmp_path: Path) -> None:
    run_preprocessing(PreprocessConfig(), ["PRRT-001"], imaging, tmp_path / "w", progress=False)
    fig = qc.qc_figure(tmp_path / "w", "PRRT-001")
    assert len(fig.data) == 5
    mip = np.asarray(fig.data[0].z)
    assert mip.shape == (75, 50) and mip.max() > 5.0  # the hot lesion shows in the MIP
    assert list(qc.grid_table(PreprocessConfig())["spacing_mm"]) == [10.0, 10.0, 10.0]


# ---------------------------------------------------------------------------
# Integration with the synthetic cohort
# ---------------------------------------------------------------------------


def test_synthetic_cohort_is_preprocessed_with_the_box_anchored_at_the_phantoms_lung_apex(
    tmp_path: Path,
) -> None:
    from prrt_utils import synthetic as synth
    cfg = synth.SynthConfig(n_patients=3, pet_matrix=32, ct_matrix=48, slice_mm=10.0)
    data = synth.generate_cohort(cfg, tmp_path / "data", progress=False)
    pcfg = PreprocessConfig()
    index = run_preprocessing(pcfg, None, data / "imaging", tmp_path / "work", progress=False)
    assert set(index["status"]) == {"ok"}
    cohort = synth.sample_cohort(cfg)
    for i, pid in enumerate(index["patient_id"]):
        phantom = synth.build_phantom(cfg, i, cohort)
        rec = json.loads((tmp_path / "work" / "preprocessed" / "cache" / f"{pid}.json").read_text())
        x0, y0, z0 = rec["facts"]["box_first_voxel_lps_mm"]
        apex = z0 + 5.0 - pcfg.top_margin_mm
        assert phantom.z_apex - 20.0 <= apex <= phantom.z_apex + 1.0  # found on a 10 mm slice below the apex
        np.testing.assert_allclose([x0 + 245.0, y0 + 245.0], phantom.centre_xy, atol=3.0)
    vols = load_volumes(tmp_path / "work", list(index["patient_id"]))
    assert vols["pet"].max() > 5.0 and vols["ct"].min() == -1024.0


@pytest.mark.slow
def test_the_preprocessing_chapter_executes_on_a_tiny_synthetic_cohort(tmp_path: Path) -> None:
    import jupytext
    import papermill

    from prrt_utils import synthetic as synth
    data = synth.generate_cohort(
        synth.SynthConfig(n_patients=2, pet_matrix=24, ct_matrix=32, slice_mm=20.0),
        tmp_path / "data",
        progress=False,
    )
    repo = Path(__file__).resolve().parents[1]
    nb = jupytext.read(repo / "notebooks" / "02_preprocessing.py")
    jupytext.write(nb, tmp_path / "02.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "02.ipynb"),
        str(tmp_path / "02_out.ipynb"),
        parameters={"data_dir": str(data), "work_dir": str(tmp_path / "work"), "n_qc_patients": 2},
        cwd=str(repo),
        kernel_name="python3",
        progress_bar=False,
    )
    index = pd.read_csv(tmp_path / "work" / "preprocessed" / "index.csv")
    assert list(index["status"]) == ["ok", "ok"]


def test_body_mass_is_water_for_water_nothing_for_air_and_bone_on_its_own_line() -> None:
    hu = np.zeros((10, 10, 10), np.float32)  # 1 litre of water at 1 ml a voxel
    mask = np.ones(hu.shape, bool)
    assert preprocess.body_mass_kg(hu, mask, 1.0) == pytest.approx(1.0)
    assert preprocess.body_mass_kg(hu - 1000.0, mask, 1.0) == 0.0  # air
    assert preprocess.body_mass_kg(hu - 500.0, mask, 2.0) == pytest.approx(1.0)  # half air, 2 ml voxels
    assert preprocess.body_mass_kg(hu + 1500.0, mask, 1.0) == pytest.approx(1.9)  # cortical bone, not 2.5
    mask[5:] = False
    assert preprocess.body_mass_kg(hu, mask, 1.0) == pytest.approx(0.5)  # only inside the mask


def test_a_ct_body_heavier_than_the_weight_allows_is_refused_with_the_number_and_the_rule() -> None:
    assert preprocess.check_body_mass(45.0, 70.0, "PRRT-001") == pytest.approx(45 / 70)
    assert preprocess.check_body_mass(45.0, None, "PRRT-001") is None  # no weight (NIfTI in SUV): nothing to check
    assert preprocess.check_body_mass(1.29 * 50, 50.0, "PRRT-001") == pytest.approx(1.29)
    with pytest.raises(InputError, match=r"weighs about 65.5 kg, 1.31 times .*\(rule: at most 1.3\)"):
        preprocess.check_body_mass(65.5, 50.0, "PRRT-001")


def test_largest_component_keeps_the_bigger_of_two_blobs_and_says_none_for_nothing() -> None:
    from prrt_utils.data.grid import largest_component

    m = np.zeros((1, 6, 6), bool)
    m[0, 0:2, 0:2] = True  # 4 voxels
    m[0, 3:6, 3:6] = True  # 9 voxels, not touching the first
    kept = largest_component(m)
    assert kept.sum() == 9 and kept[0, 4, 4] and not kept[0, 0, 0]
    assert largest_component(np.zeros((2, 2, 2), bool)) is None
