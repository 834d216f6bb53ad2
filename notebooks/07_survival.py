# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 Survival and clinical value
#
# ## Overview
#
# The paper turns progression-free survival (PFS) into a yes/no label (PFS ≤ 12 months), keeps only
# patients whose progression was observed, and reports discrimination (AUROC, AUPRC) only. This
# chapter asks the questions a statistician reviewing it would ask:
#
# * **Censoring.** In a real study some patients are still progression-free at the data cut-off.
#   We censor the synthetic cohort administratively (patients enter over several years, one
#   cut-off date; images and laboratory values are unchanged) and fit survival models that *use*
#   the censored patients: a Cox model on the laboratory values and a fusion CNN trained with the Cox
#   partial likelihood, on the same repeated cross-validation folds as every other model. We score
#   them with Harrell's and Uno's C-index, the time-dependent AUROC at 12 months and the integrated
#   Brier score. Because the synthetic truth is known, we also measure what the paper's design
#   (dropping censored patients) does to the share of short PFS, to the classification models'
#   predicted risks and to their apparent AUROC.
# * **Calibration.** Do the predicted probabilities mean what they say? Reliability diagrams, Brier
#   score, calibration intercept and slope of every classification model, out of fold, and a
#   recalibration fitted inside the training folds.
# * **Decision curves.** Would acting on a model — closer follow-up after PRRT for patients
#   predicted to progress within a year — do more good than following up everyone or no one?
# * **Uncertainty.** Bootstrap confidence intervals of AUROC and AUPRC, and DeLong's test between the
#   best fusion model and each other model, with a plain statement of which differences survive.
#
# The classification models are not retrained here: their stored out-of-fold predictions are read
# from the results folder. The survival models are fitted once and cached (by the book before this page
# runs, or by this page when it runs alone).

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
censor_fraction = 0.3
seed = 0
horizon_months = 12.0
survival_epochs = 0
n_jobs = 2
n_boot = 1000
alpha = 0.05

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
import time

from IPython.display import Markdown, display

from prrt_utils.analysis import metrics
from prrt_utils.io import figures
from prrt_utils.models import survival as sv
from prrt_utils.report import chapters, findings, notebook

t_start, cpu_start = time.perf_counter(), time.process_time()
names, _ = metrics.paper_reference()
folds, cohort = sv.study_cohort(work_dir)
cfg = sv.chapter_config(censor_fraction, seed, horizon_months, epochs=survival_epochs)
censored = sv.censor(cohort, cfg)
cfg

# %% [markdown]
# ## Censoring and what dropping it does
#
# Patients enter uniformly over the accrual period; the data cut-off is the date at which the
# chosen share of patients is still progression-free. A patient's observed time is the shorter of
# the true PFS and the follow-up to the cut-off. Censoring depends only on the entry date and on
# PFS itself, never on the laboratory values or images.
#
# **What we expect.** Patients with long PFS are the ones still progression-free at the cut-off, so
# the complete cases (the paper's design) should over-represent short PFS and have a shorter
# median PFS than the whole cohort, and a Kaplan-Meier curve of the complete cases alone should lie
# below the truth. The Kaplan-Meier estimate that keeps the censored patients should follow the
# true curve.

# %%
summary_cc = sv.complete_case_summary(censored, cfg.horizon_months)
truth_share, cc_share = summary_cc["share_short"].iloc[0], summary_cc["share_short"].iloc[1]
display(Markdown(
    f"Cut-off at month {censored.attrs['cutoff_months']:.1f} after the first patient entered: "
    f"**{int((censored['event'] == 0).sum())} of {len(censored)}** patients censored "
    f"({(censored['event'] == 0).mean():.0%}); {int((~censored['label_known']).sum())} of them before "
    f"{cfg.horizon_months:g} months, so their 12-month label is unknown. "
    f"Share of short PFS: **{truth_share:.0%}** in truth, **{cc_share:.0%}** among the complete cases "
    f"({'higher, as expected' if cc_share > truth_share else 'NOT higher: the expectation failed'})."))
summary_cc

# %%
figures.km_figure(sv.km_truth_curves(censored), threshold=cfg.horizon_months).show()

# %% [markdown]
# ## Survival models on the shared folds
#
# Two models, each fitted on the training part of every fold of `folds.csv` (5 repeats × 3 folds)
# and scored on its test part:
#
# * **Cox on labs**: lifelines' Cox proportional-hazards model on the four laboratory values
#   (log-transformed and standardised on the training part);
# * **Cox PET fusion CNN**: the PET + labs fusion network of chapter 04 whose single output is read
#   as the log-risk and trained with the Cox partial likelihood (torchsurv). To keep the chapter
#   within a few minutes on two CPU cores the PET volumes are average-pooled by 2 in each direction
#   before the network (see `SurvivalConfig.downsample`).
#
# Survival curves come from the Breslow baseline hazard of the training part. Metrics (scikit-survival):
# Harrell's C (all comparable pairs; 0.5 = chance), Uno's C (pairs weighted by the inverse
# probability of censoring, designed not to depend on the censoring pattern), the cumulative/dynamic
# AUROC at 12 months and the integrated Brier score (0 = perfect; lower is better). On synthetic data
# we also know every patient's true PFS, so **c_true** is the C-index against the uncensored truth —
# the number the censored estimators try to recover.

# %%
t0 = time.perf_counter()
table = sv.fit_survival_models(cfg, work_dir, censored, folds, n_jobs=n_jobs)  # read from the cache when complete
surv_seconds = time.perf_counter() - t0
surv_pred = table.attrs["predictions"]
print(f"survival models: {surv_seconds:.0f} s (cache: {table.attrs['cache']})")
sv.summarise_survival(table)

# %%
gap = (table["harrell"] - table["harrell_lifelines"]).abs().max()
per = sv.concordance_against_truth(table)
display(Markdown(
    f"Harrell's C from scikit-survival and from lifelines agree on every fold (largest difference "
    f"{gap:.1e}). Mean over folds, against the truth:"))
per.round(3)

# %% [markdown]
# ## Bias of the complete-case design
#
# Two ways in which dropping censored patients can mislead, both measured against the known truth.
#
# **Training.** The paper's laboratory Random Forest is retrained on every fold under three
# designs: *oracle* (true 12-month label of every training patient — impossible in a real study),
# *complete cases* (the paper: censored patients dropped) and *label known* (censored patients kept
# as long PFS when followed beyond 12 months). Every design predicts every test patient and is
# scored against the TRUE label of all of them. The survival models predict P(PFS ≤ 12 months) as
# 1 − S(12 months). **We expect** the complete-case forest to over-predict risk (its training set
# has too many short-PFS patients, so its mean predicted probability exceeds the true share of
# short PFS) and to have a worse Brier score than the oracle; its AUROC may drop a little because it
# learns from fewer patients. The survival models, which use the censored patients, should not
# show that shift.

# %%
bias = sv.classification_bias(censored, cohort, folds, surv_pred, seed=cfg.seed, n_jobs=n_jobs)
bias_mean = bias.groupby("design", sort=False)[["n_train_mean", "auroc_true", "mean_prob", "true_prevalence",
                                                "calibration_in_large", "brier_true"]].mean()
bias_mean.round(3)

# %%
oracle, cc = bias_mean.iloc[0], bias_mean.iloc[1]
display(Markdown(
    f"Came out: the complete-case forest predicts on average **{cc['mean_prob']:.2f}** for a true share of "
    f"{cc['true_prevalence']:.2f} (oracle: {oracle['mean_prob']:.2f}), i.e. it "
    f"{'over-predicts risk, as expected' if cc['calibration_in_large'] > oracle['calibration_in_large'] else 'does NOT over-predict: the expectation failed'}; "
    f"Brier score {cc['brier_true']:.3f} vs {oracle['brier_true']:.3f} for the oracle; AUROC against the truth "
    f"{cc['auroc_true']:.3f} vs {oracle['auroc_true']:.3f}."))

# %% [markdown]
# **Evaluation.** The stored predictions of the classification models (trained on the uncensored
# cohort) are scored three ways per repeat: against the true label of every patient, against the
# observed label of the complete cases only (what the paper's design would report), and of the
# label-known patients. **We expect** the complete-case AUROC to be *lower* than the AUROC against
# the truth: the patients removed are those with the longest PFS, the easiest to rank as low-risk,
# so the negatives that remain are closer to the 12-month boundary (a spectrum effect). The
# complete-case prevalence is higher, which raises AUPRC regardless of the model.

# %%
value = chapters.classification_value(work_dir, censored, n_boot=n_boot, seed=seed, alpha=alpha)
notebook.show(*value.evaluation_section(names))

# %% [markdown]
# ## Calibration of the classification models
#
# Per model and repeat, from the pooled out-of-fold predictions: Brier score, calibration intercept
# (0 is ideal; negative = the model predicts too much risk on average) and calibration slope (1 is
# ideal; below 1 = predictions too extreme, the usual sign of over-fitting). Mean over the 5 repeats.
# The diagram pools all repeats into 5 bins of equal size per model.

# %%
notebook.show(*value.calibration_section(names))

# %% [markdown]
# **Recalibration inside the training part of each fold.** For each fold, a logistic (Platt)
# recalibration (intercept and slope on the logit of the predicted probability, with Platt's
# smoothed targets so that a small set gives a finite fit) is fitted on **inner predictions**:
# patients of that fold's training part, predicted by that fold's own model without having been
# fitted on them. For the networks these are the stratified validation split (a fifth of the
# training part) held out of their fitting; for the forest and the logistic baselines, an inner
# 3-fold cross-validation over the training part. It is then applied to the fold's test patients.
# No test patient of the fold, and no model trained on one, takes part. (The other folds'
# out-of-fold predictions would not do: they come from models trained on this fold's test
# patients.) Limitation: the networks' validation split also chose their stopping epoch, so their
# inner predictions are slightly more favourable than new patients would be, and with some 15
# patients per fold the recalibration is noisy; a fold whose inner patients all fall in one class
# (possible on a small cohort) cannot be recalibrated and is left as it is (counted in the table).
# It can fix the intercept and slope; it cannot change the AUROC within a fold.

# %%
notebook.show(*value.recalibration_section(names))

# %% [markdown]
# ## Decision curves: closer follow-up after PRRT
#
# Suppose every patient whose predicted probability of progression within 12 months exceeds a
# threshold gets closer follow-up (earlier restaging). The threshold expresses how many unnecessary
# closer follow-ups one accepts per progression caught: at 0.2, four to one. Net benefit counts the
# true positives per patient minus the false positives weighted by that exchange rate (Vickers and
# Elkin 2006; computed with `dcurves`). A model is useful at a threshold only where its curve lies
# above both "follow up everyone" and "follow up no one". Curves are the mean over the 5 repeats of
# the pooled out-of-fold predictions.

# %%
notebook.show(*value.decision_section(names))

# %% [markdown]
# ## Uncertainty: bootstrap intervals and DeLong's test
#
# **Bootstrap.** Within each repeat every patient has exactly one out-of-fold prediction. The
# quantity estimated is the AUROC (and AUPRC, short PFS positive) of each patient's out-of-fold
# probability **averaged over the 5 repeats**: one prediction per patient, still from models that
# never trained on that patient. We resample patients with replacement (same seed for every model,
# so all models see the same resamples) and take the 2.5th and 97.5th percentiles. The estimate is
# that averaged prediction's AUROC on the whole cohort, usually a little above the mean of the
# per-repeat AUROCs of the other chapters (averaging smooths the noise of single training runs). The
# interval reflects the finite number of patients, not the variation between training sets.

# %%
notebook.show(*value.bootstrap_section(names))

# %% [markdown]
# **DeLong's test** compares two AUROCs measured on the same patients, allowing for the correlation
# between them (DeLong, DeLong and Clarke-Pearson 1988; the fast algorithm of Sun and Xu 2014,
# written by hand in `prrt_utils.analysis.calibration` and tested against the definition and against a published
# worked example: Hanley and McNeil's 109 CT ratings, area 0.8932 with standard error 0.0307). The
# reference is the model named before any result was seen, the paper's best (PET/CT fusion with a
# pretrained CT branch; `families.primary_model`), not the best scorer here: testing the winner of the
# same predictions would be optimistic (winner's curse). It is compared with each other model in each
# repeat, and the p-values are Holm-adjusted over the comparisons within a repeat.

# %%
notebook.show(*value.delong_section(names, n_patients=len(cohort)))

# %% [markdown]
# ## Hazard ratio of the predicted groups
#
# The Kaplan-Meier curves by prediction of chapter 05 gain a Cox hazard ratio: predicted short PFS
# against predicted long PFS (P(long) >= 0.5), for the pre-specified model above, each repeat's out-of-fold
# predictions, on the uncensored cohort's PFS. A hazard ratio above 1 means the patients predicted to
# progress early do progress faster.

# %%
notebook.show(None if value.hazard_ratios is None else value.hazard_ratios.round(3))

# %% [markdown]
# ## Summary

# %%
lines = [
    f"* **Censoring** ({(censored['event'] == 0).mean():.0%} of patients): the complete cases hold "
    f"{cc_share:.0%} short PFS against {truth_share:.0%} in truth.",
    f"* **Survival models** (mean over {table.groupby(['repeat', 'fold']).ngroups} folds): "
    + "; ".join(f"{m}: Harrell {r['harrell']:.3f}, Uno {r['uno']:.3f}, C against the true PFS {r['c_true']:.3f}"
                for m, r in per.iterrows()) + ".",
    f"* **Complete-case training** of the laboratory forest moves its mean predicted risk from "
    f"{oracle['mean_prob']:.2f} (oracle) to {cc['mean_prob']:.2f} for a true share of {cc['true_prevalence']:.2f}.",
]
lines += value.summary_lines(names)
lines.append(f"* This chapter ran in {time.perf_counter() - t_start:.0f} s wall-clock, {time.process_time() - cpu_start:.0f} s "
             f"of CPU time (survival models {surv_seconds:.0f} s, training included unless read from the cache).")
display(Markdown("\n".join(lines)))

# %% [markdown]
# Censoring is not a detail: on a cohort where a third of patients are still progression-free at
# the cut-off, keeping only patients with observed progression over-represents short PFS, and a
# classifier trained that way over-states every patient's risk while its reported AUROC describes a
# population without the longest responders. Survival models use every patient and are scored with
# estimators built for censoring; where both Harrell's and Uno's C are shown they can be compared
# with the C-index against the true PFS, which only a synthetic cohort provides. Calibration,
# decision curves and the DeLong tests say how far the classification models' probabilities can be
# taken at face value, whether acting on them would help, and which of the differences between
# models are larger than the play of chance in about a hundred patients.

# %%
findings.survival_findings(per, value.calibration if value.available else per.iloc[:0], names).glue()
