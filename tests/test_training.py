"""Training one model on one fold (prrt_utils.models.training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import auroc, folds_of, train_folds

from prrt_utils.data.folds import fold_ids
from prrt_utils.models.inputs import CohortData, FoldNormaliser, LabScaler, TrainingError
from prrt_utils.models.networks import load_registry
from prrt_utils.models.stored import load_fold
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.models.training import TrainConfig, fold_seed, resolve_device, run_fold, train_fold

torch.set_num_threads(1)
REG = load_registry()
FAST = TrainConfig(epochs=20, device="cpu")


def cv_auroc(spec_key: str, data: CohortData, cfg: TrainConfig = FAST, min_sd: float = 0.0) -> list[float]:
    """AUROC of each of 3 folds; every fold's test predictions must vary by more than ``min_sd``."""
    outs = train_folds(REG[spec_key], cfg, data, folds_of(data))
    for fold, out in enumerate(outs):
        sd = out.predictions["prob"].std()
        assert sd > min_sd, f"{spec_key} fold {fold}: constant output (sd {sd:.4f})"
    return [auroc(out) for out in outs]


@pytest.fixture(scope="module")
def signal():
    return toy_cohort_data(60, (24, 16, 16), seed=1)


@pytest.fixture(scope="module")
def noise():
    return toy_cohort_data(60, (24, 16, 16), seed=1, signal=False)


def test_fold_seeds_are_fixed_and_differ_between_folds_and_models():
    assert fold_seed(0, 1, 2, "pet_only") == fold_seed(0, 1, 2, "pet_only")
    seeds = {fold_seed(0, r, f, m) for r in range(5) for f in range(3) for m in REG}
    assert len(seeds) == 5 * 3 * len(REG)


def test_lab_scaler_is_log1p_then_standardised_with_training_statistics():
    train = np.array([[10.0, 20, 100, 50], [30, 40, 1000, 60], [20, 10, 300, 70]])
    sc = LabScaler().fit(train)
    np.testing.assert_allclose(sc.mean_, np.log1p(train).mean(0))
    np.testing.assert_allclose(sc.scale_, np.log1p(train).std(0))  # population sd, as StandardScaler
    extreme = np.array([[1e6, 1e6, 1e9, 1e6]])
    assert sc.transform(extreme).shape == (1, 4)
    np.testing.assert_allclose(sc.mean_, np.log1p(train).mean(0))  # transforming test data changes nothing
    again = LabScaler.from_dict(json.loads(json.dumps(sc.to_dict())))
    np.testing.assert_allclose(again.transform(train), sc.transform(train), rtol=1e-6)


def test_fold_normaliser_statistics_are_those_of_the_training_voxels():
    rng = np.random.default_rng(0)
    pet = rng.gamma(2.0, 1.0, (5, 1, 6, 4, 4)).astype(np.float32)
    ct = rng.normal(0, 500, (5, 1, 6, 4, 4)).astype(np.float32)
    norm = FoldNormaliser(pet_clip_suv=100.0, ct_window_hu=(-1000.0, 1000.0)).fit({"pet": pet, "ct": ct})
    assert norm.mean_["pet"] == pytest.approx(np.log1p(pet.astype(float)).mean(), rel=1e-6)
    assert norm.std_["ct"] == pytest.approx(np.clip(ct.astype(float), -1000, 1000).std(), rel=1e-6)
    z = norm.transform({"pet": pet})["pet"]
    assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, rel=1e-4)
    again = FoldNormaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.transform({"ct": ct})["ct"], norm.transform({"ct": ct})["ct"])


def test_inputs_from_the_shared_clipped_volumes_equal_normalising_each_fold_from_raw(signal):
    from prrt_utils.models.inputs import model_inputs

    data = CohortData(signal.patient_ids, signal.y, signal.labs, dict(signal.volumes))  # fresh cache
    rows = np.arange(5, 45)
    raw = FoldNormaliser(pet_clip_suv=8.0).fit({m: data.volumes[m][rows] for m in ("pet", "ct")})
    cached = FoldNormaliser(pet_clip_suv=8.0)
    cached.fit({m: data.clipped(m, cached)[rows] for m in ("pet", "ct")}, clipped=True)
    assert (cached.mean_, cached.std_) == (raw.mean_, raw.std_)
    lab = LabScaler().fit(data.labs[rows])
    got = model_inputs(REG["petct_fusion"], data, np.arange(60), cached, lab)
    want = raw.transform({m: data.volumes[m] for m in ("pet", "ct")})
    assert np.array_equal(got[0], want["pet"]) and np.array_equal(got[1], want["ct"])
    # another clip setting is not served from the cache of the first
    other = FoldNormaliser(pet_clip_suv=2.0)
    assert not np.array_equal(data.clipped("pet", other), data.clipped("pet", cached))


def test_an_extreme_test_patient_leaves_the_fitted_normalisation_and_weights_unchanged(signal):
    folds = folds_of(signal)
    train, test = fold_ids(folds, 0, 0)
    spec = REG["petct_fusion"]
    cfg = TrainConfig(epochs=3, device="cpu")
    clean = train_fold(spec, cfg, signal, train, test, 0, 0)
    i = signal.patient_ids.index(test[0])
    pet, ct, labs = (signal.volumes["pet"].copy(), signal.volumes["ct"].copy(), signal.labs.copy())
    pet[i] = 90.0
    ct[i] = 3000.0
    labs[i] = 1e7
    leaky = CohortData(signal.patient_ids, signal.y, labs, {"pet": pet, "ct": ct})
    dirty = train_fold(spec, cfg, leaky, train, test, 0, 0)
    assert dirty.normalisation == clean.normalisation
    for k, v in clean.model.state_dict().items():
        assert torch.equal(v, dirty.model.state_dict()[k]), k
    changed = dirty.predictions.set_index("patient_id")["prob"] != clean.predictions.set_index("patient_id")["prob"]
    assert changed.loc[test[0]] and not changed.drop(test[0]).any()


def test_the_default_recipe_stops_early_inside_the_training_part_and_the_papers_stays_a_named_profile():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.dropout, cfg.loss, cfg.epochs, cfg.batch_size) == (0.01, 0.01, 0.1, "bce", 60, 16)
    assert cfg.optimizer == "adamw" and cfg.early_stopping and cfg.augment and not cfg.flip
    assert cfg.pet_reference == "liver"
    paper = TrainConfig.profile("paper")
    assert paper == TrainConfig.paper()
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.dropout, paper.epochs) == ("adam", 0.01, 0.2, 0.1, 8)
    assert not paper.early_stopping and not paper.augment and paper.pet_reference == "none"
    with pytest.raises(TrainingError, match="profile"):
        TrainConfig.profile("fast")
    assert TrainConfig(optimizer="adam").optimizer == "adam"
    with pytest.raises(TrainingError, match="optimizer"):
        TrainConfig(optimizer="sgd")


@pytest.mark.parametrize("key", ["rf_labs", "pet_only", "ct_only", "pet_fusion", "petct_fusion"])
def test_each_model_family_learns_a_planted_signal_without_collapsing_to_a_constant(signal, key):
    assert np.mean(cv_auroc(key, signal, min_sd=0.02)) > 0.8


def test_with_labels_unrelated_to_the_inputs_every_family_is_at_chance(noise):
    means = {key: np.mean(cv_auroc(key, noise)) for key in ("rf_labs", "pet_only", "ct_only", "petct_fusion")}
    assert all(abs(m - 0.5) < 0.2 for m in means.values()), means
    assert abs(np.mean(list(means.values())) - 0.5) < 0.1, means


def test_two_runs_give_identical_predictions_on_cpu(signal):
    folds = folds_of(signal)
    train, test = fold_ids(folds, 0, 1)
    cfg = TrainConfig(epochs=4, device="cpu")
    a = train_fold(REG["petct_fusion"], cfg, signal, train, test, 0, 1)
    b = train_fold(REG["petct_fusion"], cfg, signal, train, test, 0, 1)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.embeddings["embedding"], b.embeddings["embedding"])
    assert a.history == b.history


def test_early_stopping_validates_on_part_of_the_training_patients_only(signal):
    folds = folds_of(signal)
    train, test = fold_ids(folds, 0, 0)
    cfg = TrainConfig(epochs=30, device="cpu", early_stopping=True, patience=3, val_fraction=0.25)
    out = train_fold(REG["pet_only"], cfg, signal, train, test, 0, 0)
    split = pd.Series(out.embeddings["split"], index=out.embeddings["patient_id"])
    assert set(split[split == "val"].index) < set(train)
    assert set(split[split == "test"].index) == set(test)
    assert out.info["n_val"] == 10 and out.info["n_train"] == 30
    assert len(out.history["val_loss"]) == len(out.history["epoch"]) <= 30
    assert 1 <= out.history["best_epoch"] <= len(out.history["epoch"])


def test_a_patient_on_both_sides_of_a_fold_is_refused(signal):
    ids = list(signal.patient_ids)
    with pytest.raises(TrainingError, match=ids[5]):
        train_fold(REG["rf_labs"], FAST, signal, ids[:30], ids[5:40])


def test_a_missing_lab_value_names_the_patient():
    data = toy_cohort_data(9, (6, 4, 4))
    labs = data.labs.copy()
    labs[3, 2] = np.nan
    with pytest.raises(TrainingError, match="TOY-003: cga_ug_l"):
        CohortData(data.patient_ids, data.y, labs, data.volumes)


def test_a_finished_fold_is_skipped_reloaded_identically_and_a_changed_config_refused(tmp_path, signal):
    folds = folds_of(signal)
    spec, cfg = REG["pet_fusion"], TrainConfig(epochs=3, device="cpu")
    assert run_fold(spec, cfg, signal, folds, 0, 2, tmp_path, "abc") == "trained"
    assert run_fold(spec, cfg, signal, folds, 0, 2, tmp_path, "abc") == "skipped"
    with pytest.raises(TrainingError, match="train_hash"):
        run_fold(spec, cfg.replace(epochs=4), signal, folds, 0, 2, tmp_path, "abc")
    fold = load_fold(tmp_path, spec, 0, 2, img_size=(24, 16, 16))
    stored = pd.read_parquet(tmp_path / "results" / "pet_fusion" / "r0_f2" / "predictions.parquet")
    with torch.no_grad():
        prob = torch.sigmoid(fold.model(*fold.inputs(signal, stored["patient_id"].tolist()))).double().numpy()
    np.testing.assert_allclose(prob, stored["prob"], rtol=1e-5)


def test_the_random_forest_fold_is_stored_and_reloaded(tmp_path, signal):
    folds = folds_of(signal)
    run_fold(REG["rf_labs"], FAST, signal, folds, 0, 0, tmp_path)
    fold = load_fold(tmp_path, REG["rf_labs"], 0, 0)
    stored = pd.read_parquet(tmp_path / "results" / "rf_labs" / "r0_f0" / "predictions.parquet")
    (labs,) = fold.inputs(signal, stored["patient_id"].tolist())
    np.testing.assert_allclose(fold.model.predict_proba(labs.numpy())[:, 1], stored["prob"])


def test_auto_device_is_cuda_exactly_when_cuda_is_available():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_augmentation_moves_pet_and_ct_of_a_patient_together_and_leaves_labs_alone():
    from prrt_utils.models.training import _augment

    x = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 1, 4, 3, 5)
    labs = torch.randn(2, 4)
    pet, ct, lab = _augment([x, x.clone(), labs], [True, True, False], torch.Generator().manual_seed(3), 1)
    assert torch.equal(pet, ct) and torch.equal(lab, labs)
    assert not torch.equal(pet, x)
    for i in range(2):  # each patient's volume is a flip/roll of itself: same voxel values
        assert torch.equal(pet[i].flatten().sort().values, x[i].flatten().sort().values)


def test_two_augmented_runs_give_identical_predictions_on_cpu(signal):
    folds = folds_of(signal)
    train, test = fold_ids(folds, 0, 2)
    cfg = TrainConfig(epochs=2, device="cpu", augment=True)
    a = train_fold(REG["pet_fusion"], cfg, signal, train, test, 0, 2)
    b = train_fold(REG["pet_fusion"], cfg, signal, train, test, 0, 2)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)


def test_a_fusion_network_starts_as_the_logistic_regression_of_its_training_labs(signal):
    from sklearn.linear_model import LogisticRegression

    from prrt_utils.models.networks import build_network
    from prrt_utils.models.training import _warm_start_lab_path

    spec = REG["pet_fusion"]
    rows = np.arange(40)
    scaler = LabScaler().fit(signal.labs[rows])
    labs = scaler.transform(signal.labs[rows])
    net = build_network(spec, img_size=signal.volumes["pet"].shape[2:]).eval()
    _warm_start_lab_path(net, labs, signal.y[rows])
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(labs, signal.y[rows])
    pet = torch.from_numpy(np.log1p(signal.volumes["pet"][rows]))
    with torch.no_grad():
        logit = net(pet, torch.from_numpy(labs)).numpy()
    # whatever the image shows, the untrained image path adds nothing: the logit is the regression's
    assert np.allclose(logit, lr.decision_function(labs), atol=1e-4)


def test_every_training_setting_states_where_it_comes_from():
    import dataclasses

    from prrt_utils.models.training import RECIPE_SOURCE_KINDS, RECIPE_SOURCES, TrainConfig, recipe_table

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(RECIPE_SOURCES) == sorted(fields)  # a new setting without a stated source fails here
    assert {src for src, _ in RECIPE_SOURCES.values()} <= set(RECIPE_SOURCE_KINDS)
    table = recipe_table(TrainConfig(epochs=7))
    assert table["setting"].tolist() == fields
    assert table.set_index("setting").loc["epochs", "value"] == "7"
    inner = table[table["source"] == "inner selection"]
    assert "grid" in " ".join(inner["why"])  # inner selection names its grid


def test_inner_predictions_are_of_training_patients_the_folds_own_model_was_not_fitted_on(signal, tmp_path):
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from prrt_utils.models.inputs import LabScaler
    from prrt_utils.models.networks import make_forest
    from prrt_utils.models.stored import INNER_FILE
    from prrt_utils.models.training import fold_seed, fold_status

    folds = folds_of(signal)
    train, test = fold_ids(folds, 0, 1)
    # a network: its validation split, predicted by the fold's final network (the rows' embedding split says "val")
    cfg = TrainConfig(epochs=5, device="cpu", early_stopping=True, patience=3, val_fraction=0.25)
    out = train_fold(REG["pet_only"], cfg, signal, train, test, 0, 1)
    split = pd.Series(out.embeddings["split"], index=out.embeddings["patient_id"])
    inner = out.inner_predictions
    assert set(inner["patient_id"]) == set(split[split == "val"].index)
    assert set(inner["patient_id"]) < set(train) and not set(inner["patient_id"]) & set(test)
    assert (inner["source"] == "validation").all() and (inner[["repeat", "fold"]] == (0, 1)).all().all()
    # a forest: inner 3-fold CV over the whole training part, never the forest fitted on all of it
    rf = train_fold(REG["rf_labs"], FAST, signal, train, test, 0, 1)
    inner = rf.inner_predictions.set_index("patient_id").loc[list(train)]
    assert (inner["source"] == "inner_cv").all() and not set(inner.index) & set(test)
    seed = fold_seed(FAST.seed, 0, 1, "rf_labs")
    rows = signal.rows(train)
    x = signal.features(REG["rf_labs"], rows, LabScaler(signal.lab_columns).fit(signal.labs[rows]))
    want = cross_val_predict(clone(make_forest(REG["rf_labs"], seed)), x, signal.y[rows],
                             cv=StratifiedKFold(3, shuffle=True, random_state=seed), method="predict_proba")[:, 1]
    np.testing.assert_allclose(inner["prob"], want)
    in_sample = rf.model.predict_proba(x)[:, 1]
    assert np.abs(in_sample - want).mean() > 0.05  # the in-sample forest would look far too good
    # written with the fold; a finished fold without them is trained again, not reused
    run_fold(REG["rf_labs"], FAST, signal, folds, 0, 1, tmp_path)
    path = tmp_path / "results" / "rf_labs" / "r0_f1" / INNER_FILE
    pd.testing.assert_frame_equal(pd.read_parquet(path), rf.inner_predictions)
    path.unlink()
    assert fold_status(REG["rf_labs"], FAST, tmp_path, 0, 1) == ("todo", [])
    assert run_fold(REG["rf_labs"], FAST, signal, folds, 0, 1, tmp_path) == "trained" and path.is_file()
