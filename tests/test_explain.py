"""Chapter 06's computations (prrt_utils.analysis.explain): known answers on a tiny stored grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression

from prrt_utils.analysis import explain, saliency_stats
from prrt_utils.analysis.explain import ExplainConfig, Explainer, permutation_drops
from prrt_utils.data.folds import make_folds
from prrt_utils.io import store
from prrt_utils.models.networks import get_spec
from prrt_utils.models.stored import load_fold
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.models.training import TrainConfig, run_fold
from prrt_utils.synthetic import LABELS, Grid, to_nifti_array

torch.set_num_threads(1)
SHAPE = (12, 10, 10)
MODELS = ("rf_labs", "pet_only", "pet_fusion")


# --------------------------------------------------------------------------- a tiny results store


@pytest.fixture(scope="module")
def toy():
    return toy_cohort_data(n_patients=30, shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def work(tmp_path_factory, toy):
    """WORK with folds.csv, cohort/cohort.csv and results of three models on one repeat of 3 folds."""
    work = tmp_path_factory.mktemp("work")
    folds = make_folds(pd.DataFrame({"patient_id": toy.patient_ids, "pfs_short": toy.y}), 3, 1, 0)
    store.write_csv(work / "folds.csv", folds)
    rng = np.random.default_rng(0)
    pfs = np.where(toy.y == 1, rng.uniform(2, 12, toy.y.size), rng.uniform(12.5, 40, toy.y.size))
    cohort = pd.DataFrame({"patient_id": toy.patient_ids, "pfs_months": pfs, "event": 1, "pfs_short": toy.y})
    for j, c in enumerate(toy.lab_columns):
        cohort[c] = toy.labs[:, j]
    store.write_csv(work / "cohort" / "cohort.csv", cohort)
    cfg = TrainConfig(epochs=2, device="cpu")
    for m in MODELS:
        spec = get_spec(m)
        if spec.kind == "random_forest":
            spec = spec.replace(n_estimators=40)  # speed; the stored forest is what is read back
        for fold in range(3):
            run_fold(spec, cfg, toy, folds, 0, fold, work)
    return work


@pytest.fixture(scope="module")
def explainer(work, toy, tmp_path_factory):
    cfg = ExplainConfig(n_permutations=4, max_values=500, bins=20)
    return Explainer(work, config=cfg, cache_dir=tmp_path_factory.mktemp("cache"), data=toy)


# --------------------------------------------------------------------------- permutation importance


def _signal(n=80, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = (x[:, 0] + 0.5 * rng.standard_normal(n) > 0).astype(int)
    return x, y


def test_permutation_drops_equal_scikit_learns_permutation_importance_for_single_columns():
    x, y = _signal()
    model = LogisticRegression().fit(x, y)
    ref = permutation_importance(model, x, y, scoring="roc_auc", n_repeats=7, random_state=11)
    base, drops = permutation_drops(lambda v: model.predict_proba(v)[:, 1], x, y, {"a": [0], "b": [1], "c": [2]},
                                    n_repeats=7, random_state=11)
    got = np.stack([drops["a"], drops["b"], drops["c"]])
    np.testing.assert_allclose(got, ref.importances, rtol=0, atol=1e-12)


def test_permuting_a_feature_the_model_ignores_drops_nothing():
    x, y = _signal()
    _, drops = permutation_drops(lambda v: 1 / (1 + np.exp(-v[:, 0])), x, y, {"used": [0], "ignored": [2]}, 10, 0)
    assert np.all(drops["ignored"] == 0.0)
    assert drops["used"].mean() > 0.2


def test_group_permutation_of_two_identical_columns_acts_as_one_feature():
    x, y = _signal()
    twin = np.column_stack([x[:, 0], x[:, 0]])  # AST and ALT in the extreme: perfectly correlated

    def both(v):
        return v[:, 0] + v[:, 1]

    _, d_two = permutation_drops(both, twin, y, {"first": [0], "group": [0, 1]}, 10, 5)
    _, d_one = permutation_drops(lambda v: v[:, 0], twin[:, :1], y, {"only": [0]}, 10, 5)
    # one shared row permutation of both columns = permuting the single underlying value (same permutations)
    np.testing.assert_allclose(d_two["group"], d_one["only"], atol=1e-12)
    # permuting one twin alone leaves the other carrying the signal: the single drop understates the pair's
    assert d_two["first"].mean() < d_two["group"].mean()


def test_group_vs_singles_reports_the_difference():
    summary = pd.DataFrame({"model": "m", "feature": ["AST", "ALT", "AST+ALT"], "kind": ["single", "single", "group"],
                            "mean_drop": [0.01, 0.02, 0.08]})
    row = explain.group_vs_singles(summary).iloc[0]
    assert row["sum of singles"] == pytest.approx(0.03)
    assert row["group - sum"] == pytest.approx(0.05)


# --------------------------------------------------------------------------- saliency


class _Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.w, self.v = w, v

    def forward(self, pet, labs):
        return (pet[:, 0] * self.w).sum(dim=(1, 2, 3)) + labs @ self.v


def test_saliency_of_a_linear_model_equals_its_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(SHAPE, generator=g)
    model = _Linear(w, torch.tensor([0.5, -1.0, 0.0, 2.0]))
    pet, labs = torch.randn(5, 1, *SHAPE, generator=g), torch.randn(5, 4, generator=g)
    sal = explain.pet_saliency(model, [pet, labs], index=0, batch_size=2)
    assert sal.shape == (5, *SHAPE)
    for s in sal:
        np.testing.assert_allclose(s, w.numpy(), rtol=1e-6)
    lab_sal = explain.pet_saliency(model, [pet, labs], index=1)
    np.testing.assert_allclose(lab_sal, np.tile([0.5, -1.0, 0.0, 2.0], (5, 1)))


def test_normalised_magnitudes_lie_in_0_1_with_one_maximum_per_patient():
    s = np.random.default_rng(0).standard_normal((3, *SHAPE)) * np.array([1, 10, 100])[:, None, None, None]
    n = explain.normalised_magnitude(s)
    assert n.min() >= 0 and np.allclose(n.reshape(3, -1).max(axis=1), 1.0)
    np.testing.assert_allclose(n[1], np.abs(s[1]) / np.abs(s[1]).max(), rtol=1e-6)


def test_saliency_of_each_patient_comes_from_the_fold_that_held_it_out(explainer, work, toy):
    pid = toy.patient_ids[7]
    fold = explainer.test_fold_of(pid)
    loaded = load_fold(work, get_spec("pet_fusion"), 0, fold, img_size=SHAPE)
    expected = explain.pet_saliency(loaded.model, loaded.inputs(toy, [pid]))
    np.testing.assert_allclose(explainer.saliency("pet_fusion", [pid]), expected)
    assert expected.shape == (1, *SHAPE) and np.abs(expected).max() > 0


def test_gradient_distributions_cover_every_voxel_of_every_test_patient(explainer):
    out = explainer.gradient_distributions(["pet_only", "pet_fusion"])
    hist = out["hist"]
    assert out["n_patients"] == 30
    for m in ("pet_only", "pet_fusion"):
        h = hist[hist["model"] == m]
        assert h["count"].sum() == 30 * int(np.prod(SHAPE))
        assert (h["density"] * (h["bin_right"] - h["bin_left"])).sum() == pytest.approx(1.0)
        assert out["samples"][m].size == 500 and out["samples"][m].max() <= 1.0


# --------------------------------------------------------------------------- stored models: importance, gradients, UMAP


def test_permutation_importance_on_stored_folds(explainer):
    tidy = explainer.permutation_importance(["rf_labs", "pet_only", "pet_fusion"])
    assert set(tidy["model"]) == {"rf_labs", "pet_fusion"}  # PET only has no labs
    feats = tidy.groupby("model")["feature"].unique().map(set)
    assert feats["rf_labs"] == {"AST", "ALT", "CgA", "gamma-GT", "AST+ALT"}
    assert feats["pet_fusion"] == {"AST", "ALT", "CgA", "gamma-GT", "AST+ALT", explain.IMAGE_FEATURE}
    assert len(tidy) == 3 * 4 * (5 + 6)
    summary = explain.importance_summary(tidy)
    assert set(summary.columns) >= {"mean_drop", "sd_permutations", "se_folds", "n_folds"}
    assert (summary["n_folds"] == 3).all()


def test_lab_gradients_match_finite_differences_of_the_head(explainer, work, toy):
    tidy = explainer.lab_gradients(["rf_labs", "pet_fusion"])
    assert set(tidy["model"]) == {"pet_fusion"} and len(tidy) == 30 * 4
    h = explainer._held_out("pet_fusion", 0, 1)
    i = 2
    x = torch.from_numpy(h["x"][i : i + 1]).double()
    head = h["head"].double()
    eps = 1e-5
    for j, lab in enumerate(["AST", "ALT", "CgA", "gamma-GT"]):
        e = torch.zeros_like(x)
        e[0, h["offset"] + j] = eps
        with torch.no_grad():
            fd = float((head(x + e) - head(x - e)) / (2 * eps))
        got = tidy[(tidy["fold"] == 1) & (tidy["patient_id"] == h["ids"][i]) & (tidy["feature"] == lab)]["gradient"]
        assert float(got.iloc[0]) == pytest.approx(fd, rel=1e-3, abs=1e-6)
    head.float()
    assert set(explain.lab_gradient_summary(tidy)["feature"]) == {"AST", "ALT", "CgA", "gamma-GT"}


def test_umap_is_deterministic_with_a_seed(work, toy, tmp_path):
    cfg = ExplainConfig(umap_neighbors=8)
    a = Explainer(work, config=cfg, cache_dir=False, data=toy).umap(["pet_only", "pet_fusion"])
    b = Explainer(work, config=cfg, cache_dir=False, data=toy).umap(["pet_only", "pet_fusion"])
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2 * 30 and set(a["split"]) == {"train", "val", "test"}  # val: early stopping's split
    assert a["silhouette"].between(-1, 1).all()


def test_cache_is_keyed_by_the_folds_done_json(work, toy, tmp_path):
    ex = Explainer(work, config=ExplainConfig(n_permutations=2), cache_dir=tmp_path, data=toy)
    first = ex.permutation_importance(["rf_labs"])
    files = list(tmp_path.glob("permutation-*.parquet"))
    assert len(files) == 1
    pd.testing.assert_frame_equal(ex.permutation_importance(["rf_labs"]), first)
    done = work / "results" / "rf_labs" / "r0_f0" / "done.json"
    original = done.read_text()
    try:
        done.write_text(json.dumps({**json.loads(original), "seconds": -1}))
        ex.permutation_importance(["rf_labs"])
        assert len(list(tmp_path.glob("permutation-*.parquet"))) == 2
    finally:
        done.write_text(original)


# --------------------------------------------------------------------------- ground-truth labels on the model grid (regions: saliency_stats)


def _label_case(tmp_path):
    """A 5 mm label map (synthetic-cohort NIfTI conventions) and a 10 mm target grid with aligned boundaries."""
    src = Grid(x=-97.5 + 5.0 * np.arange(40), y=-97.5 + 5.0 * np.arange(40), z=97.5 - 5.0 * np.arange(40))
    lab = np.zeros(src.shape, dtype=np.uint8)
    lab[4:36, 4:36, 4:36] = 1  # body
    lab[20:24, 20:24, 20:24] = 11  # lesion: LPS x, y in [0, 20) mm, z in (-20, 0] mm
    lab[6:9, 6:8, 26:30] = 5  # kidney: 3 x 2 x 4 source voxels, cutting target voxels in halves
    gt = tmp_path / "data" / "ground_truth"
    (gt / "labels").mkdir(parents=True)
    img = nib.Nifti1Image(to_nifti_array(lab), src.nifti_affine())
    img.header.set_qform(src.nifti_affine(), code=1)
    img.header.set_sform(src.nifti_affine(), code=1)
    nib.save(img, gt / "labels" / "P-1.nii.gz")
    store.write_json(gt / "labels.json", {str(k): v for k, v in LABELS.items()})
    # target as the preprocessing stores it: d -> -z, h -> +y, w -> +x, 10 mm, first centre at (-95, -95, 95)
    target = np.array([[0, 0, 10.0, -95.0], [0, 10.0, 0, -95.0], [-10.0, 0, 0, 95.0], [0, 0, 0, 1]])
    return lab, target


def test_label_resampling_preserves_volume_and_lands_where_the_geometry_says(tmp_path):
    lab, target = _label_case(tmp_path)
    labels, affine, names = explain.load_label_map(tmp_path / "data", "P-1")
    regions = saliency_stats.region_codes(names)
    assert regions["lesion"] == (10, 11, 12, 13, 14, 15) and regions["kidney"] == (5,)
    fr = saliency_stats.region_fractions(labels, affine, target, (20, 20, 20), regions)
    # volume (in target voxels of 1000 mm^3) = source voxels x 125 mm^3
    for name, code in (("lesion", [11]), ("kidney", [5])):
        assert fr[name].sum() * 1000 == pytest.approx(np.isin(lab, code).sum() * 125, rel=1e-5)
    lesion = np.zeros((20, 20, 20))
    lesion[10:12, 10:12, 10:12] = 1.0
    np.testing.assert_allclose(fr["lesion"], lesion, atol=1e-6)
    # kidney: 3 source slices (15 mm) over two 10 mm target slices -> one full, one half occupied
    assert sorted(np.unique(np.round(fr["kidney"][fr["kidney"] > 0], 6)).tolist()) == [0.5, 1.0]
    total = sum(fr.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_labels_on_grid_reads_the_stored_grid_of_each_patient(tmp_path, work, toy):
    _, target = _label_case(tmp_path)
    w = tmp_path / "work"
    store.write_csv(w / "folds.csv", pd.DataFrame({"repeat": [0], "fold": [0], "patient_id": ["P-1"], "split": ["test"]}))
    (w / "preprocessed").mkdir(parents=True)
    np.savez(w / "preprocessed" / "P-1.npz", pet=np.zeros((20, 20, 20), np.float32), ct=np.zeros((20, 20, 20), np.float32),
             affine=target)
    store.write_csv(w / "preprocessed" / "index.csv",
                    pd.DataFrame({"patient_id": ["P-1"], "status": ["ok"], "reason": [""], "file": ["P-1.npz"], "sha256": ["x"]}))
    out = Explainer(w, tmp_path / "data", cache_dir=False, data=toy).labels_on_grid(["P-1"])
    names = out["names"]
    code = {v: k for k, v in names.items()}
    got = out["labels"][0] == code["lesion"]
    assert got.sum() == 8 and got[10:12, 10:12, 10:12].all()
    sal = np.zeros((20, 20, 20))
    sal[10:12, 10:12, 10:12] = 1.0
    table = saliency_stats.saliency_mass_fraction(sal, out["labels"][0], names).set_index("region")
    assert table.loc["lesion", "mass_fraction"] == pytest.approx(1.0)
