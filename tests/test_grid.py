"""Running the folds of several models, resumably and in parallel (prrt_utils.models.crossval)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from helpers import write_toy_work

from prrt_utils.data.folds import CVConfig
from prrt_utils.models import crossval, stored
from prrt_utils.models.inputs import CohortData
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.models.training import TrainConfig

torch.set_num_threads(1)
CV = CVConfig(n_splits=3, n_repeats=2, seed=0)
CFG = TrainConfig(epochs=3, device="cpu")
MODELS = ["rf_labs", "pet_fusion", "petct_fusion"]
FOLD_FILES = {"predictions.parquet", "inner_predictions.parquet", "embeddings.npz", "normalisation.json", "history.json", "done.json"}


@pytest.fixture(autouse=True)
def _design_reader(monkeypatch):
    # read volumes by the DESIGN.md contract, independently of the preprocessing module
    monkeypatch.setattr(crossval, "_load_volumes", crossval._volumes_from_index)


@pytest.fixture(scope="module")
def data():
    return toy_cohort_data(36, (12, 8, 8), seed=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted in-process run of three models."""
    work = write_toy_work(tmp_path_factory.mktemp("ref"), data)
    pred = crossval.run_grid(MODELS, work, CV, CFG, n_jobs=1, progress=False, torch_threads=1)
    return work, pred


def test_every_fold_of_every_model_is_written_with_done_json(reference):
    work, pred = reference
    for model in MODELS:
        for r in range(2):
            for f in range(3):
                files = {p.name for p in (work / "results" / model / f"r{r}_f{f}").iterdir()}
                assert FOLD_FILES <= files
                assert ("weights.joblib" if model == "rf_labs" else "weights.pt") in files
    assert (work / "results" / "pet_fusion" / "model.yaml").exists()
    on_disk = pd.read_parquet(work / "results" / "predictions.parquet")
    pd.testing.assert_frame_equal(on_disk, pred)
    assert list(pred.columns) == ["model", "repeat", "fold", "patient_id", "y_true", "prob"]
    per_repeat = pred.groupby(["model", "repeat"])["patient_id"].agg(lambda s: sorted(s))
    assert all(ids == sorted(pred["patient_id"].unique()) for ids in per_repeat)  # each patient once per repeat
    # inner predictions (for recalibration inside the fold) never hold one of the fold's test patients
    inner = stored.read_inner_results(work, MODELS)
    assert set(inner["model"]) == set(MODELS)
    for (m, r, f), g in inner.groupby(["model", "repeat", "fold"]):
        test = pred[(pred["model"] == m) & (pred["repeat"] == r) & (pred["fold"] == f)]["patient_id"]
        assert len(g) and not set(g["patient_id"]) & set(test), (m, r, f)


def test_an_interrupted_grid_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, data, reference):
    _, ref = reference
    work = write_toy_work(tmp_path, data)
    crossval.run_grid(["rf_labs", "pet_fusion"], work, CV, CFG, n_jobs=1, progress=False, torch_threads=1)
    # interrupt: one fold lost its done.json mid-write of its files, another never started
    (work / "results" / "pet_fusion" / "r1_f2" / "done.json").unlink()
    (work / "results" / "pet_fusion" / "r1_f2" / "predictions.parquet").write_bytes(b"half-written")
    shutil.rmtree(work / "results" / "pet_fusion" / "r0_f1")
    pred = crossval.run_grid(MODELS, work, CV, CFG, n_jobs=1, progress=False, torch_threads=1)
    pd.testing.assert_frame_equal(pred, ref)


def test_local_processes_and_a_dask_cluster_give_the_same_predictions_as_one_process(tmp_path, data, reference):
    _, ref = reference
    ref = ref[ref["model"].isin(["rf_labs", "petct_fusion"])].reset_index(drop=True)
    procs = write_toy_work(tmp_path / "procs", data)
    pred = crossval.run_grid(["rf_labs", "petct_fusion"], procs, CV, CFG, n_jobs=2, progress=False, torch_threads=1)
    pd.testing.assert_frame_equal(pred, ref)

    from dask.distributed import Client, LocalCluster

    dask_work = write_toy_work(tmp_path / "dask", data)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pred = crossval.run_grid(["rf_labs", "petct_fusion"], dask_work, CV, CFG, scheduler=client, progress=False)
    pd.testing.assert_frame_equal(pred, ref)


def test_volumes_are_read_from_the_preprocessed_files_once(tmp_path, data, monkeypatch):
    calls = []

    def counting(work_dir, ids):
        calls.append(len(ids))
        return crossval._volumes_from_index(work_dir, ids)

    monkeypatch.setattr(crossval, "_load_volumes", counting)
    work = write_toy_work(tmp_path, data)
    crossval.run_grid(["pet_only"], work, CVConfig(n_repeats=1), CFG, n_jobs=1, progress=False)
    crossval.run_grid(["ct_only", "pet_fusion"], work, CVConfig(n_repeats=1), CFG, n_jobs=1, progress=False)
    assert calls == [36]


def test_patients_without_preprocessed_images_are_left_out_of_every_models_folds(tmp_path, data):
    work = write_toy_work(tmp_path, data, drop_images=("TOY-004", "TOY-017"))
    pred = crossval.run_grid(["rf_labs"], work, CVConfig(n_repeats=1), CFG, n_jobs=1, progress=False)
    assert pred["patient_id"].nunique() == 34
    assert not {"TOY-004", "TOY-017"} & set(pd.read_csv(work / "folds.csv")["patient_id"])


def test_a_changed_training_config_is_refused_instead_of_mixed_with_old_folds(tmp_path, data):
    work = write_toy_work(tmp_path, data)
    crossval.run_grid(["pet_only"], work, CVConfig(n_repeats=1), CFG, n_jobs=1, progress=False)
    with pytest.raises(stored.GridError, match="train_hash"):
        crossval.run_grid(["pet_only"], work, CVConfig(n_repeats=1), CFG.replace(lr=0.001), n_jobs=1, progress=False)
    pred = crossval.run_grid(["pet_only"], work, CVConfig(n_repeats=1), CFG.replace(lr=0.001), n_jobs=1,
                         progress=False, force=True)
    assert len(pred) == 36


def test_re_preprocessed_volumes_or_corrected_labs_make_finished_folds_stale_not_reused(tmp_path, data):
    work = write_toy_work(tmp_path, data)
    crossval.run_grid(["rf_labs"], work, CVConfig(n_repeats=1), CFG, n_jobs=1, progress=False)
    labs = data.labs.copy()
    labs[0, 2] *= 3.0  # a corrected CgA value for one patient
    write_toy_work(work, CohortData(data.patient_ids, data.y, labs, data.volumes))
    with pytest.raises(stored.GridError, match="folds_sha256"):
        crossval.run_grid(["rf_labs"], work, CVConfig(n_repeats=1), CFG, n_jobs=1, progress=False)


def test_history_and_embedding_readers_return_tidy_tables(reference):
    work, _ = reference
    hist = stored.load_histories(work, ["pet_fusion"])
    assert len(hist) == 6 * CFG.epochs and set(hist["epoch"]) == {1, 2, 3}
    emb = stored.load_embeddings(work, "petct_fusion", 1, 2)
    assert len(emb) == 36 and (emb["split"] == "test").sum() == 12
    # id, split, PET (log-mean + max) x 8 thresholds, CT (avg + max) x 32 channels, 4 labs
    assert emb.shape[1] == 2 + 2 * 8 + 2 * 32 + 4
    assert set(stored.fold_table(work)["model"]) == set(MODELS)


def test_a_missing_cohort_says_which_stage_to_run(tmp_path):
    with pytest.raises(stored.GridError, match="prrt cohort"):
        crossval.run_grid(["rf_labs"], tmp_path, progress=False)
