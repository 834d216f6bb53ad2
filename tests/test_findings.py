"""Key findings (prrt_utils.report.findings): sentences computed from results, and the summary page's answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import fold_predictions
from sklearn.metrics import roc_auc_score

from prrt_utils.analysis import metrics
from prrt_utils.report import findings


def test_the_box_is_an_admonition_holding_every_sentence():
    box = findings.KeyFindings(("first", "second")).plus("third")
    md = box.markdown()
    assert md.startswith("```{admonition} Key findings") and md.endswith("```")
    assert [line for line in md.splitlines() if line.startswith("* ")] == ["* first", "* second", "* third"]


def test_model_findings_give_each_models_auroc_and_the_paired_comparison_with_its_sign():
    pred = fold_predictions({"rf_labs": 0.3, "pet_fusion": 1.5})
    results = metrics.evaluate(pred, order=["rf_labs", "pet_fusion"])
    box = findings.model_findings(results, comparisons=[("pet_fusion", "rf_labs")])
    first, *rest = box.sentences
    # the difference is the mean over paired folds of AUROC(pet_fusion) - AUROC(rf_labs), recomputed here
    diffs = [roc_auc_score(g.loc[g.model == "pet_fusion", "y_true"], g.loc[g.model == "pet_fusion", "prob"])
             - roc_auc_score(g.loc[g.model == "rf_labs", "y_true"], g.loc[g.model == "rf_labs", "prob"])
             for _, g in pred.groupby(["repeat", "fold"])]
    assert np.mean(diffs) > 0.1
    assert f"**{np.mean(diffs):+.3f}**" in first and "over 9 paired test folds" in first and "higher" in first
    assert any(f"Random Forest (labs) **{results.get('rf_labs').format(2)}**" in s for s in rest)
    assert any("PET fusion" in s and results.get("pet_fusion").format(2) in s for s in rest)
    assert not any("Bayes" in s for s in rest)  # no ceiling on a real cohort


def test_saliency_findings_report_the_lesion_share_and_the_organs():
    mass = pd.DataFrame({"model": ["pet_only"] * 4, "region": ["lesion", "spleen", "kidney", "other body"],
                         "mass_fraction": [0.4, 0.1, 0.05, 0.45], "enrichment": [800.0, 2.0, 1.0, 0.5]})
    (sentence,) = findings.saliency_findings(mass).sentences
    assert "**40 %**" in sentence and "800 times" in sentence and "15 % on spleen, kidneys and bladder" in sentence


def test_the_answer_table_sets_each_model_beside_the_paper_and_its_ceiling():
    pred = fold_predictions({"rf_labs": 0.3, "pet_fusion": 1.5, "lr_labs": 0.5})
    models = ["rf_labs", "pet_fusion", "lr_labs"]
    results = metrics.evaluate(pred, order=models)
    from prrt_utils.analysis import calibration
    from prrt_utils.data import paper

    intervals = calibration.bootstrap_table(pred, models, n_boot=50)
    ans = findings.Answer(results, None, paper.paper_table2(), intervals, "pet_fusion", findings.KeyFindings(()))
    table = ans.table().set_index("model")
    assert table.loc["rf_labs", "paper (real cohort)"] == "0.59 ± 0.02"
    assert table.loc["lr_labs", "paper (real cohort)"] == "not in paper"
    assert table.loc["pet_fusion", "AUROC, mean ± SE over repeats"] == results.get("pet_fusion").format(2)
    fig = ans.figure()
    assert [t.name for t in fig.data][:3] == ["95 % interval over patients", "ours: mean ± SE over repeats",
                                              "paper (real cohort), mean ± SE"]
    assert "Logistic regression (labs)" in fig.data[1].y  # baselines named in words, not by key



def test_power_finding_states_the_ceiling_comparison_and_the_share_of_cohorts():
    from prrt_utils.analysis import metrics, stats
    from prrt_utils.report import findings
    from prrt_utils.synthetic import SynthConfig

    cfg = SynthConfig(n_patients=116)
    power = metrics.comparison_power(cfg, seeds=range(2))
    ceiling = metrics.generator_ceilings(cfg)
    text = findings.power_finding(ceiling, power)
    r = stats.paired_model_test(ceiling.fold_metrics, "ceiling_labs_image", "ceiling_labs")
    assert f"labs alone by **{r.mean_difference:+.3f}**" in text
    assert abs(r.p_value - power.per_seed.loc[0, "p vs labs"]) < 1e-12  # seed 0 is this cohort
    assert "over 2 cohorts of 116 patients" in text
    share = 100 * float((power.per_seed["p vs labs"] < 0.05).mean())
    assert f"against the labs in {share:.0f} %" in text
    assert "not evidence of no difference" in text
    assert findings.power_finding(ceiling).endswith("(corrected resampled t-test).")
