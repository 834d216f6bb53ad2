"""Key findings in words, computed from a chapter's own results, and the book's results-first answer.

Each chapter opens with a "Key findings" box. The sentences are not written by
hand: a chapter computes its results, passes them to one function of this module
(:func:`cohort_findings`, :func:`preprocessing_findings`, :func:`model_findings`,
:func:`paired_finding`, :func:`saliency_findings`), and shows the returned
:class:`KeyFindings` at the top of its page with :meth:`KeyFindings.glue` (myst-nb's
``glue``: the box is computed at the end of the page's code and drawn at its top).

:func:`answer` gathers what the summary page shows: every model's AUROC beside the
paper's and the ceilings, the pre-specified comparisons that answer the paper's
question (do the images add to the laboratory values, and the laboratory values to
the images?), and three sentences computed from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown

from prrt_utils.analysis import calibration, families, metrics, stats
from prrt_utils.data import paper
from prrt_utils.io.figures import PALETTE, rgba
from prrt_utils.report import notebook
from prrt_utils.report.tables import WORDS

__all__ = ["Answer", "KeyFindings", "answer", "cohort_findings", "family_findings", "km_finding", "model_findings",
           "paired_finding", "power_finding", "preprocessing_findings", "saliency_findings", "survival_findings",
           "validation_findings"]


@dataclasses.dataclass(frozen=True)
class KeyFindings:
    """A few sentences computed from results, drawn as a "Key findings" box.

    Attributes
    ----------
    sentences : tuple of str
        Markdown sentences, one bullet each.
    title : str
    """

    sentences: tuple[str, ...]
    title: str = "Key findings"

    def markdown(self) -> str:
        """A MyST admonition (a box on the page) with one bullet per sentence."""
        bullets = "\n".join(f"* {s}" for s in self.sentences) or "* Nothing to report: no results."
        return f"```{{admonition}} {self.title}\n:class: tip\n{bullets}\n```"

    def plus(self, *sentences: str) -> KeyFindings:
        """These findings and more sentences after them."""
        return dataclasses.replace(self, sentences=(*self.sentences, *sentences))

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def glue(self, name: str = "key_findings") -> None:
        """Store the box for the page's ``{glue:md}`` directive (drawn where the directive stands)."""
        from myst_nb import glue  # lazy: myst-nb loads Sphinx (seconds); only an executing book page glues

        glue(name, Markdown(self.markdown()), display=False)


def _name(model: str, names: Mapping[str, str] | None = None) -> str:
    return {**WORDS, **(names or {})}.get(model, model)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


# --------------------------------------------------------------------------- chapters


def cohort_findings(table: pd.DataFrame, km: Any, threshold: float, n_excluded: int) -> KeyFindings:
    """Chapter 01: how many patients, how many progressed early, the median PFS, all beside the paper's."""
    classified = table[table["pfs_short"].notna()]
    n_short = int(classified["pfs_short"].sum())
    ref = paper.PAPER_N
    share = 100 * n_short / max(len(classified), 1)
    return KeyFindings((
        f"**{len(classified)}** patients can be classified at {threshold:g} months: **{n_short}** ({share:.0f} %) "
        f"progressed within {threshold:g} months (the paper: {ref['pfs_short']} of {ref['total']}, "
        f"{100 * ref['pfs_short'] / ref['total']:.0f} %).",
        f"Median PFS **{km.median:.1f} months** (IQR {km.q1:.1f}–{km.q3:.1f}), from {km.events} observed "
        f"progressions in {km.n} patients; the paper reports {paper.PAPER_KM['median_pfs_months']:g} months.",
        "No patient was excluded at this stage." if n_excluded == 0 else
        f"**{n_excluded}** patient(s) excluded at this stage, each with its reason in the last table.",
    ))


def preprocessing_findings(index: pd.DataFrame) -> KeyFindings:
    """Chapter 02: how many patients reached the common grid, and why the others did not."""
    ok = int((index["status"] == "ok").sum())
    sentences = [f"**{ok} of {len(index)}** patients were resampled onto the common PET/CT grid."]
    rest = index[index["status"] != "ok"]
    if len(rest):
        reasons = rest["status"].value_counts()
        sentences.append("Not preprocessed: " + ", ".join(f"{n} {status}" for status, n in reasons.items())
                         + " (reasons per patient below).")
    else:
        sentences.append("Every patient's PET and CT passed the checks (units, timing, geometry, coverage).")
    return KeyFindings(tuple(sentences))


def model_findings(results: metrics.ModelResults, ceiling: metrics.ModelResults | None = None,
                   names: Mapping[str, str] | None = None,
                   comparisons: Sequence[tuple[str, str]] = ()) -> KeyFindings:
    """Chapters 03-05: each model's mean AUROC, grouped by what it sees, against the ceiling of those inputs.

    Without ground truth (a real cohort) the models are listed against chance only.
    ``comparisons``: ``(model, reference)`` pairs fixed in advance, each one sentence
    of :func:`paired_finding` first.
    """
    sentences = [paired_finding(results.fold_metrics, m, r, names) for m, r in comparisons]
    groups: dict[str | None, list[str]] = {}
    for m in results.models:
        groups.setdefault(metrics.input_family(m), []).append(m)
    for family, models in groups.items():
        listed = ", ".join(f"{_name(m, names)} **{results.get(m).format(2)}**" for m in models)
        sees = {"labs": "the laboratory values", "image": "images", "labs+image": "images and laboratory values"}
        head = f"Seeing {sees.get(family, 'their inputs')}: {listed} (AUROC, mean ± SE over repeats)"
        cname = metrics.CEILING_MODELS.get(family or "")
        if ceiling is not None and cname in ceiling.models:
            head += f"; the best any model could reach from these inputs is {ceiling.get(cname).mean:.2f}"
        sentences.append(head + ".")
    if ceiling is not None:
        sentences.append(f"Knowing every patient's true risk gives an AUROC of {ceiling.get('bayes_ceiling').mean:.2f} "
                         "(the Bayes ceiling); chance is 0.50.")
    return KeyFindings(tuple(sentences))


def paired_finding(fold_metrics: pd.DataFrame, model: str, reference: str, names: Mapping[str, str] | None = None,
                   question: str = "") -> str:
    """One sentence: ``model`` against ``reference`` by the corrected resampled t-test over the paired test folds."""
    r = stats.paired_model_test(fold_metrics, model, reference)
    lead = f"{question} " if question else ""
    return (f"{lead}{_name(model, names)} vs {_name(reference, names)}: AUROC difference **{r.mean_difference:+.3f}** "
            f"over {r.n} paired test folds, **{stats.verdict(r)}** (corrected resampled t-test).")


def power_finding(ceiling: metrics.ModelResults, power: metrics.ComparisonPower | None = None) -> str:
    """One sentence: how much this cohort could show, from the truth-based ceilings on its own folds.

    Even the logistic regression on the true values of labs and image is compared
    with the ceiling of each input family alone; with ``power``
    (:func:`prrt_utils.analysis.metrics.comparison_power`), also how often that comparison
    reaches p < 0.05 over cohorts of the same size from the same generator.
    """
    both = metrics.CEILING_MODELS["labs+image"]
    parts = []
    for family in ("labs", "image"):
        r = stats.paired_model_test(ceiling.fold_metrics, both, metrics.CEILING_MODELS[family])
        parts.append(f"{family} alone by **{r.mean_difference:+.3f}** ({_p(r.p_value)})")
    text = ("How much could this cohort show? The true values of labs and image together (the ceilings) "
            "beat " + " and ".join(parts) + " on these folds (corrected resampled t-test)")
    if power is None or power.per_seed.empty:
        return text + "."
    t = power.table().set_index("comparison")[power.share_column]
    return (text + f"; over {len(power.per_seed)} cohorts of {power.n_patients} patients from the same generator "
            f"the truth itself reaches p < {power.alpha:g} against the labs in {t.iloc[0]:.0f} %, against the "
            f"image in {t.iloc[1]:.0f} % and against both in {t.iloc[2]:.0f} %. A non-significant "
            "comparison above is therefore what this cohort size gives, not evidence of no difference.")


def family_findings(comparison: stats.FamilyComparison) -> KeyFindings:
    """Chapter 05: each family against the next simpler one, Mann-Whitney as the paper and the corrected t-test."""
    words = {"unimodal": "unimodal models", "one_image_fusion": "one-image fusion",
             "dual_fusion": "PET/CT fusion"}
    return KeyFindings(tuple(
        f"{words.get(c.group, c.group)} vs {words.get(c.reference, c.reference)}: Cliff's delta "
        f"**{c.cliffs_delta:+.2f}** ({c.magnitude}); Mann-Whitney {_p(c.p_adjusted)} (Bonferroni, the paper's "
        f"test), corrected resampled t-test {_p(c.ttest_p_adjusted)}, which allows for folds that share "
        "training patients." for c in comparison.comparisons))


def km_finding(km: Any, model: str, names: Mapping[str, str] | None = None) -> str:
    """One sentence: PFS of the patients a model predicts short vs long (:class:`prrt_utils.analysis.kaplan_meier.KMByPrediction`)."""
    if min(km.n_long, km.n_short) == 0:
        return (f"{_name(model, names)} puts every patient on one side of its threshold: no survival "
                "comparison by prediction is possible.")
    return (f"Patients {_name(model, names)} predicts to progress early: median PFS **{km.median_short:.1f} months** "
            f"(n = {km.n_short}) vs **{km.median_long:.1f}** for the others (n = {km.n_long}); log-rank "
            f"{_p(km.p_value)}.")


def survival_findings(concordance: pd.DataFrame, calibration_means: pd.DataFrame,
                      names: Mapping[str, str] | None = None) -> KeyFindings:
    """Chapter 07: censoring-aware concordance against the true risk's, and calibration of the classifiers.

    ``concordance``: per survival model ``harrell, c_true`` (means over folds);
    ``calibration_means``: per classifier ``intercept, slope`` (means over folds).
    """
    sentences = [f"{_name(m, names)}: Harrell's C **{row['harrell']:.2f}**, the true risk's C on the same "
                 f"patients {row['c_true']:.2f}." for m, row in concordance.iterrows()]
    if len(calibration_means):
        slope = calibration_means["slope"]
        sentences.append(f"Calibration slopes of the classifiers range from {slope.min():.2f} to {slope.max():.2f} "
                         "(1 is ideal; below 1, predictions too extreme); the recalibration below is fitted "
                         "inside each training part.")
    return KeyFindings(tuple(sentences))


def validation_findings(discrimination: pd.DataFrame, development: metrics.MetricSummary,
                        calibration_table: pd.DataFrame, model: str, names: Mapping[str, str] | None = None) -> KeyFindings:
    """Chapter 08: discrimination and calibration of a shipped model on another cohort, beside its development CV.

    ``discrimination``: :func:`prrt_utils.analysis.validation.discrimination`; ``calibration_table``: the first
    table of :func:`prrt_utils.analysis.validation.calibration_summary` (first row: as shipped).
    """
    auc = discrimination.loc[discrimination["metric"] == "AUROC"].iloc[0]
    shipped = calibration_table.iloc[0]
    return KeyFindings((
        f"{_name(model, names)} on the other cohort, without retraining: AUROC **{auc['estimate']:.2f}** (95 % CI "
        f"{auc['ci_lower']:.2f} to {auc['ci_upper']:.2f}); in cross-validation on the development cohort "
        f"{development.format(2)}.",
        f"As shipped it predicts on average {shipped['mean predicted']:.2f} for an observed share of "
        f"{shipped['observed share']:.2f} (calibration slope {shipped['slope']:.2f}; 1 is ideal): a centre should "
        "recalibrate before it uses the probabilities.",
    ))


def saliency_findings(mass: pd.DataFrame, names: Mapping[str, str] | None = None) -> KeyFindings:
    """Chapter 06: the share of each PET model's saliency on lesions and on the hot normal organs."""
    organs = ("spleen", "kidney", "bladder")
    sentences = []
    for model, part in mass.groupby("model", sort=False):
        part = part.set_index("region")
        share, enrichment = part["mass_fraction"], part["enrichment"]
        on_organs = float(share.reindex(organs).fillna(0).sum())
        sentences.append(f"{_name(model, names)}: **{100 * share.get('lesion', 0):.0f} %** of its PET saliency "
                         f"falls on lesions ({enrichment.get('lesion', math.nan):.0f} times their share of the "
                         f"voxels), {100 * on_organs:.0f} % on spleen, kidneys and bladder.")
    return KeyFindings(tuple(sentences))


# --------------------------------------------------------------------------- the answer


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the summary page shows: every model against the paper and the ceilings, and the key comparisons.

    Attributes
    ----------
    results : ModelResults
        Every trained model (the paper's seven, then the baselines), fold metrics and mean ± SE.
    ceiling : ModelResults or None
        Truth-based ceilings (synthetic cohort only).
    paper_table : DataFrame
        The paper's Table 2 (real cohort).
    intervals : DataFrame
        Bootstrap 95 % interval of each model's AUROC over patients
        (:func:`prrt_utils.analysis.calibration.bootstrap_table`: the repeat-averaged prediction).
    primary : str
        The pre-specified model (:data:`prrt_utils.data.paper.PRIMARY_MODEL` or its stand-in).
    findings : KeyFindings
        The three sentences that answer the paper's question on this cohort.
    """

    results: metrics.ModelResults
    ceiling: metrics.ModelResults | None
    paper_table: pd.DataFrame
    intervals: pd.DataFrame
    primary: str
    findings: KeyFindings

    def table(self) -> pd.DataFrame:
        """One row per model: ours (mean ± SE, 95 % interval over patients), the paper's, the ceilings."""
        ref = self.paper_table.set_index("model")
        iv = self.intervals[self.intervals["metric"] == "auroc"].set_index("model")
        rows = []
        for m in self.results.models:
            s = self.results.get(m)
            row = {"model": m, "AUROC, mean ± SE over repeats": s.format(2),
                   "95 % interval over patients": f"{iv.at[m, 'lower']:.2f}–{iv.at[m, 'upper']:.2f}",
                   "paper (real cohort)": (f"{ref.at[m, 'auroc_mean']:.2f} ± {ref.at[m, 'auroc_se']:.2f}"
                                           if m in ref.index else "not in paper")}
            if self.ceiling is not None:
                cname = metrics.CEILING_MODELS.get(metrics.input_family(m) or "")
                row["ceiling of its inputs"] = f"{self.ceiling.get(cname).mean:.2f}" if cname in self.ceiling.models else ""
                row["Bayes ceiling"] = f"{self.ceiling.get('bayes_ceiling').mean:.2f}"
            rows.append(row)
        return pd.DataFrame(rows)

    def figure(self, names: Mapping[str, str] | None = None) -> Any:
        """Each model's AUROC (mean ± SE) beside the paper's, the ceiling of its inputs and the Bayes ceiling."""
        models = self.results.models[::-1]  # the first model at the top
        labels = [_name(m, names) for m in models]
        ref = self.paper_table.set_index("model")
        fig = go.Figure()
        ours = [self.results.get(m) for m in models]
        iv = self.intervals[self.intervals["metric"] == "auroc"].set_index("model")
        fig.add_trace(go.Scatter(
            x=[iv.at[m, "estimate"] for m in models], y=labels, mode="markers", name="95 % interval over patients",
            marker={"color": rgba(PALETTE[0], 0), "size": 1},
            error_x={"type": "data", "symmetric": False, "color": rgba(PALETTE[0], 0.35), "thickness": 6, "width": 0,
                     "array": [iv.at[m, "upper"] - iv.at[m, "estimate"] for m in models],
                     "arrayminus": [iv.at[m, "estimate"] - iv.at[m, "lower"] for m in models]},
            hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[s.mean for s in ours], y=labels, mode="markers", name="ours: mean ± SE over repeats",
            marker={"color": PALETTE[0], "size": 11}, error_x={"type": "data", "array": [s.se for s in ours]},
            hovertemplate="%{y}: AUROC %{x:.2f}<extra>this cohort</extra>"))
        known = [m for m in models if m in ref.index]
        fig.add_trace(go.Scatter(
            x=[ref.at[m, "auroc_mean"] for m in known], y=[_name(m, names) for m in known], mode="markers",
            name="paper (real cohort), mean ± SE", marker={"color": PALETTE[1], "size": 10, "symbol": "diamond-open",
                                                           "line": {"width": 2}},
            error_x={"type": "data", "array": [ref.at[m, "auroc_se"] for m in known]},
            hovertemplate="%{y}: AUROC %{x:.2f}<extra>paper</extra>"))
        if self.ceiling is not None:
            cm = [(m, metrics.CEILING_MODELS.get(metrics.input_family(m) or "")) for m in models]
            cm = [(m, c) for m, c in cm if c in self.ceiling.models]
            fig.add_trace(go.Scatter(
                x=[self.ceiling.get(c).mean for _, c in cm], y=[_name(m, names) for m, _ in cm], mode="markers",
                name="ceiling of its inputs (true values)", marker={"color": PALETTE[2], "size": 12, "symbol": "line-ns-open",
                                                                    "line": {"width": 3}},
                hovertemplate="%{y}: ceiling %{x:.2f}<extra></extra>"))
            bayes = self.ceiling.get("bayes_ceiling").mean
            fig.add_vline(x=bayes, line_dash="dash", line_color=PALETTE[2],
                          annotation_text=f"Bayes ceiling {bayes:.2f}", annotation_position="top")
        fig.add_vline(x=0.5, line_dash="dot", line_color="grey", annotation_text="chance",
                      annotation_position="top left")
        fig.update_layout(xaxis={"title": "AUROC (short PFS, 12 months)", "range": [0.3, 1.0]},
                          height=120 + 42 * len(models), margin={"t": 40, "l": 10, "r": 10},
                          legend={"orientation": "h", "y": -0.25}, title={"text": "Every model, against the paper "
                                                                          "and the best AUROC possible", "font": {"size": 14}})
        return fig


def answer(work_dir: str | Path, data_dir: str | Path, models: Sequence[str] | None = None, seed: int = 0,
           n_boot: int = 1000) -> Answer:
    """Everything the summary page shows, from the stored results of ``work_dir`` (nothing is trained).

    The comparisons are fixed before any result is seen: the pre-specified model
    (:func:`prrt_utils.analysis.families.primary_model`) against the laboratory-only Random Forest
    (do images add to the labs?) and against each image-only network (do the labs add
    to the images?).
    """
    models = list(models) if models else families.available_models(work_dir)
    loaded = notebook.load_results(work_dir, data_dir, models)
    predictions, results, ceiling = loaded.predictions, loaded.results, loaded.ceiling
    intervals = calibration.bootstrap_table(predictions, models, n_boot=n_boot, seed=seed)
    primary = families.primary_model(models)
    fm = results.fold_metrics
    sentences = []
    if "rf_labs" in models and primary != "rf_labs":
        sentences.append(paired_finding(fm, primary, "rf_labs", question="Do the images add to the laboratory values?"))
    image_only = [m for m in ("pet_only", "ct_only") if m in models and m != primary]
    if image_only:
        parts = [stats.paired_model_test(fm, primary, m) for m in image_only]
        sentences.append("Do the laboratory values add to the images? " + "; ".join(
            f"vs {_name(m)}: **{r.mean_difference:+.3f}**, {stats.verdict(r)}" for m, r in zip(image_only, parts, strict=True))
            + f" ({_name(primary)}, corrected resampled t-test).")
    s = results.get(primary)
    ref = paper.paper_table2().set_index("model")
    where = f" (the paper: {ref.at[primary, 'auroc_mean']:.2f} on its real cohort)" if primary in ref.index else ""
    if ceiling is not None:
        synth_cfg = metrics.read_synth_config(data_dir)
        power = metrics.comparison_power(synth_cfg) if synth_cfg is not None else None
        sentences.append(power_finding(ceiling, power))
        bayes = ceiling.get("bayes_ceiling").mean
        share = (s.mean - 0.5) / (bayes - 0.5) if bayes != 0.5 else math.nan
        sentences.append(f"{_name(primary)} reaches AUROC **{s.format(2)}**{where}; on this cohort no model could "
                         f"exceed **{bayes:.2f}** (the Bayes ceiling), so it gets {100 * share:.0f} % of the way "
                         "from chance to the best possible.")
    else:
        sentences.append(f"{_name(primary)} reaches AUROC **{s.format(2)}**{where}.")
    return Answer(results, ceiling, paper.paper_table2(), intervals, primary, KeyFindings(tuple(sentences),
                                                                                            title="The answer"))
