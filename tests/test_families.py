"""Chapter 05's models, families and representative folds (prrt_utils.analysis.families): known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from prrt_utils.analysis import families
from prrt_utils.analysis.kaplan_meier import km_by_prediction
from prrt_utils.data.paper import MODEL_KEYS, PRIMARY_MODEL
from prrt_utils.io import store


def test_representative_fold_and_repeat_are_the_median_ones():
    fm = pd.DataFrame({"model": "m", "repeat": [0, 0, 0, 1, 1, 1, 2, 2, 2], "fold": [0, 1, 2] * 3,
                       "auroc": [0.9, 0.5, 0.6, 0.7, 0.4, 0.65, 0.55, 0.8, 0.3]})
    assert families.representative_fold(fm, "m") == (0, 2)  # median 0.6
    assert families.representative_repeat(fm, "m") == 1  # repeat means 0.667, 0.583, 0.55 -> median 0.583
    fm2 = pd.concat([fm, fm.assign(model="n", auroc=fm["auroc"] + 0.01)])
    assert families.best_model(fm2, ["m", "n"]) == "n"


def test_families_follow_the_inputs():
    fam = families.families(["rf_labs", "pet_only", "ct_only", "pet_fusion", "ct_fusion", "petct_fusion",
                            "petct_fusion_pretrained"])
    order = families.family_order()
    assert {fam[m] for m in ("rf_labs", "pet_only", "ct_only")} == {order[0]}
    assert {fam[m] for m in ("pet_fusion", "ct_fusion")} == {order[1]}
    assert {fam[m] for m in ("petct_fusion", "petct_fusion_pretrained")} == {order[2]}
    assert families.fusion_models(list(fam)) == ["pet_fusion", "ct_fusion", "petct_fusion", "petct_fusion_pretrained"]


def _stored(n=30):
    """One repeat's out-of-fold predictions of one model and the cohort table they join to."""
    rng = np.random.default_rng(0)
    ids = [f"P{i:03d}" for i in range(n)]
    y = rng.integers(0, 2, n)
    pfs = np.where(y == 1, rng.uniform(2, 12, n), rng.uniform(12.5, 40, n))
    pred = pd.DataFrame({"model": "pet_fusion", "repeat": 0, "fold": np.arange(n) % 3, "patient_id": ids,
                         "y_true": y, "prob": np.clip(0.5 * y + rng.uniform(0, 0.5, n), 0, 1)})
    cohort = pd.DataFrame({"patient_id": ids, "pfs_months": pfs, "event": 1, "pfs_short": y, "ast_u_l": 30.0})
    return pred, cohort


def test_survival_frame_and_km_over_repeats(tmp_path):
    pred, cohort = _stored()
    store.write_csv(tmp_path / "cohort" / "cohort.csv", cohort)
    surv = families.read_survival(tmp_path)
    assert list(surv.columns) == ["patient_id", "pfs_months", "event", "pfs_short"]
    frame = families.survival_frame(pred, surv, "pet_fusion", 0)
    assert len(frame) == 30 and frame["patient_id"].is_unique
    assert frame["pfs_months"].tolist() == pytest.approx(cohort["pfs_months"].tolist())
    km = families.km_over_repeats(pred, surv, "pet_fusion")
    assert len(km) == 1 and km["n_long"].iloc[0] + km["n_short"].iloc[0] == 30
    one = km_by_prediction(frame, 0.5, prob_is="short")
    assert km["logrank_chi2"].iloc[0] == pytest.approx(one.logrank_statistic)
    with pytest.raises(families.ResultsError, match="no predictions"):
        families.survival_frame(pred, surv, "pet_fusion", 1)
    with pytest.raises(families.ResultsError, match="build the cohort first"):
        families.read_survival(tmp_path / "nothing")


def test_the_single_model_analyses_use_the_pre_specified_model_not_the_best_scorer():
    assert families.primary_model(list(MODEL_KEYS)) == PRIMARY_MODEL == "petct_fusion_pretrained"
    # Without it: the fusion model with the most inputs by registry order, whatever the scores.
    assert families.primary_model(["rf_labs", "pet_fusion", "petct_fusion", "pet_only"]) == "petct_fusion"
    assert families.primary_model(["rf_labs", "pet_only"]) == "pet_only"


def test_compare_model_families_orders_the_families_and_lists_their_members():
    rng = np.random.default_rng(0)
    models = ["rf_labs", "pet_only", "pet_fusion", "petct_fusion"]
    rows = [{"model": m, "repeat": r, "fold": f, "auroc": 0.5 + 0.1 * k + rng.normal(0, 0.02)}
            for k, m in enumerate(models) for r in range(3) for f in range(3)]
    fm = pd.DataFrame(rows)
    fc = families.compare_model_families(fm, models)
    assert fc.order == ("unimodal", "one_image_fusion", "dual_fusion")
    assert fc.members() == {"unimodal": ["rf_labs", "pet_only"], "one_image_fusion": ["pet_fusion"],
                            "dual_fusion": ["petct_fusion"]}
    assert set(fc.comparisons) == {"fold", "repeat"}
    assert len(fc.table()) == 4  # two comparisons x two sample units
    texts = [x for x in fc.disagreements(0.05) if isinstance(x, str)]
    assert len(texts) == 2 and "per-fold" in texts[0] and "per-repeat" in texts[1]
    one = families.compare_model_families(fm[fm["model"].isin(["rf_labs", "pet_only"])], ["rf_labs", "pet_only"])
    assert one.comparisons == {} and one.table().startswith("Fewer than two") and one.disagreements() == ()
    assert families.km_note(SimpleNamespace(n_long=3, n_short=4, threshold=0.5)) is None
    assert "one group at threshold 0.5" in families.km_note(SimpleNamespace(n_long=0, n_short=7, threshold=0.5))
