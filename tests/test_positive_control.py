"""The positive control (issue 14): a cohort whose PFS the PET decides must be learned by the default recipe.

A small version of the book's positive control, through every real stage: the generator writes
DICOM, the cohort and preprocessing stages read it, the PET-only network trains on the folds with
the default TrainConfig. A pipeline that cannot learn it is broken, whatever else passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from prrt_utils import grid
from prrt_utils.cohort import CohortConfig, build_cohort
from prrt_utils.folds import CVConfig, ensure_folds, fold_ids
from prrt_utils.models import get_spec
from prrt_utils.preprocess import PreprocessConfig, run_preprocessing
from prrt_utils.synth import SynthConfig, generate_cohort
from prrt_utils.training import TrainConfig, train_fold

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def positive_control(tmp_path_factory):
    root = tmp_path_factory.mktemp("pc")
    data, work = root / "data", root / "work"
    generate_cohort(SynthConfig(n_patients=48, seed=3, scenario="positive-control"), data, progress=False, n_jobs=1)
    build_cohort(CohortConfig(), data, work)
    run_preprocessing(PreprocessConfig(), work / "cohort" / "cohort.csv", data / "imaging", work, progress=False)
    cohort = grid.eligible_cohort(work, "pfs_short")
    folds = ensure_folds(cohort, work, CVConfig(n_repeats=1))
    data_ = grid._worker_data(str(grid.prepare_inputs(work, cohort, ["pet"], "pfs_short")))
    return data_, folds


def _cv(data, folds, spec, cfg):
    torch.set_num_threads(1)
    aucs, losses = [], []
    for f in range(3):
        train, test = fold_ids(folds, 0, f)
        out = train_fold(spec, cfg, data, train, test, 0, f)
        aucs.append(roc_auc_score(out.predictions["y_true"], out.predictions["prob"]))
        losses.append(min(out.history["train_loss"]))
    return float(np.mean(aucs)), float(np.mean(losses))


def test_the_pet_only_network_learns_the_burden_that_decides_the_outcome(positive_control):
    data, folds = positive_control
    assert "organs" in data.volumes  # the liver reference and organ masking are in use
    auroc, loss = _cv(data, folds, get_spec("pet_only"), TrainConfig(seed=0))
    assert auroc >= 0.8, auroc
    assert loss < 0.6, loss


def test_the_radiomics_baseline_reads_the_burden_too(positive_control):
    data, folds = positive_control
    aucs = []
    for f in range(3):
        train, test = fold_ids(folds, 0, f)
        out = train_fold(get_spec("radiomics_lr"), TrainConfig(seed=0), data, train, test, 0, f)
        aucs.append(roc_auc_score(out.predictions["y_true"], out.predictions["prob"]))
    assert np.mean(aucs) >= 0.8, aucs
