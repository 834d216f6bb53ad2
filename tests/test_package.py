"""Model packages: train on the whole development cohort, reload, refuse what does not match (prrt_utils.models.package)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import write_toy_work

from prrt_utils.data.folds import CVConfig
from prrt_utils.data.preprocess import PreprocessConfig
from prrt_utils.io import store
from prrt_utils.models import crossval, final, inputs, package
from prrt_utils.models.inputs import CohortData
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.models.training import TrainConfig

torch.set_num_threads(1)
CFG = TrainConfig(epochs=3, device="cpu")
PRE = PreprocessConfig(shape=(12, 8, 8))  # the toy volumes' grid: a new patient is preprocessed onto it


@pytest.fixture(scope="module")
def data():
    return toy_cohort_data(30, (12, 8, 8), seed=4)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, data):
    work = write_toy_work(tmp_path_factory.mktemp("pkg") / "work", data)
    store.write_text(work / "preprocessed" / "config.yaml", PRE.to_yaml())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crossval, "_load_volumes", crossval._volumes_from_index)
        crossval.run_grid(["rf_labs", "pet_fusion"], work, CVConfig(n_splits=3, n_repeats=1), CFG, n_jobs=1,
                      progress=False, torch_threads=1)
        toy_reader = lambda w, ids: crossval._volumes_from_index(w, list(ids))  # noqa: E731
        mp.setattr(final, "load_volumes", toy_reader)  # where train_final reads the images
        mp.setattr(inputs, "load_volumes", toy_reader)
        paths = {m: final.train_final(work, work.parent / f"{m}.pkg", m, CFG) for m in ("rf_labs", "pet_fusion")}
    return work, paths


def test_a_package_round_trips_and_predicts_like_the_model_it_holds(packaged, data):
    work, paths = packaged
    pkg = package.load_package(paths["pet_fusion"])
    assert len(pkg.folds) == 3 and pkg.manifest["n_development"] == 30
    pred = pkg.predict(data)
    assert pred["prob"].between(0, 1).all() and (pred["prob_folds_q05"] <= pred["prob_folds_q95"]).all()
    again = package.load_package(paths["pet_fusion"]).predict(data)
    np.testing.assert_array_equal(pred["prob"], again["prob"])
    # a fold model in the package predicts its own test patients exactly as it did during cross-validation
    fold = json.loads((work / "results" / "pet_fusion" / "r0_f0" / "done.json").read_text())
    import pandas as pd

    cv = pd.read_parquet(work / "results" / "pet_fusion" / "r0_f0" / "predictions.parquet")
    test = CohortData(tuple(cv["patient_id"]), cv["y_true"].to_numpy(),
                      data.labs[data.rows(cv["patient_id"].tolist())],
                      {"pet": data.volumes["pet"][data.rows(cv["patient_id"].tolist())]})
    member = pkg.folds[0]
    np.testing.assert_allclose(pkg._probs(member, test), cv["prob"], rtol=1e-5, atol=1e-6)
    assert fold["n_test"] == len(cv)
    forest = package.load_package(paths["rf_labs"]).predict(data)
    assert forest["prob"].between(0, 1).all()


def test_a_package_holds_no_patient_id(packaged, data):
    _, paths = packaged
    blob = b"".join(p.read_bytes() for p in paths["pet_fusion"].rglob("*") if p.is_file())
    assert not [pid for pid in data.patient_ids if pid.encode() in blob]
    dev = package.load_package(paths["pet_fusion"]).development
    assert list(dev.columns) == ["prob", "y_true"] and len(dev) == 30


def test_a_changed_file_other_versions_or_other_preprocessing_are_refused(packaged, tmp_path):
    _, paths = packaged
    copy = tmp_path / "pkg"
    shutil.copytree(paths["pet_fusion"], copy)
    with (copy / "final" / "weights.pt").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(package.PackageError, match=r"changed since packaging.*final/weights.pt"):
        package.load_package(copy)
    shutil.rmtree(copy)
    shutil.copytree(paths["pet_fusion"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["versions"]["torch"] = "1.13.1"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(package.PackageError, match=r"other versions: torch 1.13.1 \(package\)"):
        package.load_package(copy)
    assert package.load_package(copy, check_versions=False).spec.name == "pet_fusion"
    pkg = package.load_package(paths["pet_fusion"])
    pkg.check_preprocessing(PRE)
    pkg.check_preprocessing(PRE.replace(on_error="stop"))  # how errors are handled is not the volumes
    with pytest.raises(package.PackageError, match="top_margin_mm: package 50.0, here 80.0"):
        pkg.check_preprocessing(PRE.replace(top_margin_mm=80.0))
    with pytest.raises(package.PackageError, match=r"shape: package \[12, 8, 8\], here \[75, 50, 50\]"):
        pkg.check_preprocessing(PreprocessConfig())
    with pytest.raises(package.PackageError, match="not a model package"):
        package.load_package(tmp_path)


def test_train_final_needs_the_cross_validation_reuses_and_never_overwrites(packaged):
    work, paths = packaged
    mtime = (paths["rf_labs"] / "manifest.json").stat().st_mtime_ns
    assert final.train_final(work, paths["rf_labs"], "rf_labs", CFG) == paths["rf_labs"]  # same sources: reused
    assert (paths["rf_labs"] / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(package.PackageError, match="other results or settings"):
        final.train_final(work, paths["rf_labs"], "rf_labs", CFG.replace(epochs=4))
    with pytest.raises(package.PackageError, match="no finished fold"):
        final.train_final(work, work.parent / "x.pkg", "ct_only", CFG)
    assert not (work.parent / "x.pkg").exists()


# --------------------------------------------------------------------------- one new patient: prrt predict

LABS = "ast_u_l=38,alt_u_l=27,cga_ug_l=142,ggt_u_l=56"


@pytest.fixture(scope="module")
def report(packaged, tmp_path_factory):
    import dicom_factory as fac

    from prrt_utils import cli

    _, paths = packaged
    root = tmp_path_factory.mktemp("newpatient")
    folder = root / "Pat_48152342"  # named like a hospital id: the name must not reach the page
    fac.write_patient(folder, key="n", seed=5)
    out = root / "report.html"
    assert cli.main(["predict", "--model", str(paths["pet_fusion"]), "--patient", str(folder), "--labs", LABS,
                     "--out", str(out)]) == 0
    return out


def test_the_report_says_the_probability_its_range_and_that_it_is_a_research_model(report):
    text = report.read_text()
    assert "Probability of progression within 12 months" in text and "Research model" in text
    assert "cross-validation models give" in text and "Laboratory contributions" in text
    assert "PET saliency" in text
    assert "<script src=\"http" not in text and "Plotly.newPlot" in text  # plotly.js itself is embedded
    assert "plotly.js v" in text


def test_the_report_speaks_a_clinicians_words(report):
    text = report.read_text()
    for label in ("AST (U/l)", "ALT (U/l)", "CgA (µg/l)", "gamma-GT (U/l)"):
        assert label in text, label
    assert "cga_ug_l" not in text and "ggt_u_l" not in text  # no column names of the code
    assert "percentage points" in text and "How to read this report" in text
    assert "SUVbw 0-10" in text and "MIP" in text


def test_the_development_histogram_spreads_a_narrow_band_over_its_bins():
    from prrt_utils.report.patient_report import development_bins

    rng = np.random.default_rng(0)
    probs = rng.uniform(0.25, 0.45, 200)
    bins = development_bins(probs, also=0.5)
    edges = np.arange(bins["start"], bins["end"] + bins["size"], bins["size"])
    filled = (np.histogram(probs, edges)[0] > 0).sum()
    assert filled >= 12, "the cohort's spread shows in many bars"
    assert (np.histogram(probs, np.arange(0, 1.05, 0.05))[0] > 0).sum() <= 5  # what fixed 0.05 bins gave
    assert bins["start"] < 0.25 and bins["end"] > 0.5  # this patient lies inside


def test_the_pet_is_shown_in_a_fixed_suv_window_with_a_mip_and_contributions_in_points():
    from types import SimpleNamespace

    import pandas as pd

    from prrt_utils.report.patient_report import PatientPrediction, _figures

    rng = np.random.default_rng(1)
    pet = rng.uniform(0, 30, (12, 8, 8)).astype(np.float32)
    sal = rng.standard_normal((12, 8, 8)).astype(np.float32)
    effects = pd.DataFrame({"laboratory value": ["cga_ug_l"], "patient": [500.0], "development median": [100.0],
                            "probability with the median instead": [0.30], "contribution": [0.05]})
    p = PatientPrediction("x", pd.Series({"prob": 0.35}), {"cga_ug_l": 500.0}, effects, 50.0, pet, sal, "m", [])
    pkg = SimpleNamespace(development=pd.DataFrame({"prob": rng.uniform(0.2, 0.5, 40), "y_true": [0, 1] * 20}))
    hist, labs, images = _figures(pkg, p)
    assert labs.data[0].y == ("CgA (µg/l)",) and labs.data[0].x[0] == pytest.approx(5.0)
    mip = images.data[0]
    np.testing.assert_allclose(np.asarray(mip.z), pet.max(axis=1))
    assert (mip.zmin, mip.zmax) == (0.0, 10.0)
    assert all(t.zmax == 10.0 for t in images.data if t.colorbar.title.text == "SUVbw")


def test_the_report_carries_no_identifying_data(report):
    import dicom_factory as fac

    text = report.read_text()
    leaked = [v for v in [*fac.FAKE_PHI.values(), "48152342", "Pat_"] if str(v) in text]
    assert leaked == []
    from plotly.offline import get_plotlyjs

    assert "48152342" not in get_plotlyjs()  # (so the check above can fail)


def test_a_lab_at_the_development_median_contributes_nothing(packaged):
    from prrt_utils.report.patient_report import parse_labs

    _, paths = packaged
    pkg = package.load_package(paths["rf_labs"])
    medians = {c: pkg.summary["labs"][c]["q50"] for c in pkg.manifest["lab_columns"]}
    from prrt_utils.report.patient_report import predict_patient

    result = predict_patient(pkg, "unused: the forest reads no image", medians)
    assert (result.lab_effects["contribution"] == 0).all()
    with pytest.raises(package.PackageError, match="missing"):
        parse_labs("ast_u_l=3", tuple(medians))
    with pytest.raises(package.PackageError, match="non-negative"):
        parse_labs(LABS.replace("38", "-1"), tuple(medians))


@pytest.mark.browser
def test_the_report_opens_offline_and_draws_its_figures(report, offline_browser):
    page = offline_browser.open(report)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    assert page.locator(".js-plotly-plot").count() == 3  # development cohort, laboratory values, PET planes
    drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(d => d.querySelectorAll('.main-svg path, .main-svg image, .main-svg rect').length)")
    assert all(n > 0 for n in drawn), drawn
    offline_browser.assert_clean()


# --------------------------------------------------------------------------- external validation helpers


def test_recalibration_in_the_large_matches_the_observed_share_and_keeps_the_ranking():
    from sklearn.metrics import roc_auc_score

    from prrt_utils.analysis.validation import recalibrate_in_the_large

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.15 + 0.3 * y + rng.normal(0, 0.15, 400), 0.01, 0.99)  # too low on average
    new, a = recalibrate_in_the_large(y, p)
    assert a > 0  # predictions were too low: logits move up
    assert new.mean() == pytest.approx(y.mean(), abs=0.02)  # the offset-only logistic fit matches the share
    assert roc_auc_score(y, new) == pytest.approx(roc_auc_score(y, p))


def test_a_shifted_lab_is_flagged_and_an_unshifted_one_is_not():
    from prrt_utils.analysis.validation import shift_table

    dev = {"labs": {"cga_ug_l": {"q25": 100.0, "q50": 200.0, "q75": 400.0}, "ast_u_l": {"q25": 20.0, "q50": 28.0, "q75": 36.0}}}
    val = {"labs": {"cga_ug_l": {"q25": 300.0, "q50": 500.0, "q75": 900.0}, "ast_u_l": {"q25": 21.0, "q50": 29.0, "q75": 35.0}}}
    table = shift_table(dev, val).set_index("feature")
    assert bool(table.loc["cga_ug_l", "shifted"]) and not bool(table.loc["ast_u_l", "shifted"])
    assert table.loc["cga_ug_l", "shift_iqr"] == pytest.approx(1.0)  # (500 - 200) / (400 - 100)
    # a lab scaled by an assay (x 1.6) is flagged even when its median stays inside a wide development IQR
    wide = {"labs": {"cga_ug_l": {"q25": 80.0, "q50": 380.0, "q75": 1200.0}}}
    scaled = {"labs": {"cga_ug_l": {"q25": 130.0, "q50": 608.0, "q75": 1900.0}}}
    row = shift_table(wide, scaled).iloc[0]
    assert row["median_ratio"] == pytest.approx(1.6) and bool(row["shifted"])
    assert not bool(shift_table(wide, wide).iloc[0]["shifted"])
