"""Survival analysis of PFS with censored patients (chapter 07): censoring, Cox models, survival CNN, bias.

The paper (Baur et al. 2025, section 2.1) keeps only patients with observed
progression and turns PFS into a binary label (<= 12 months). This module
uses censored patients instead of dropping them, and measures on the
synthetic cohort, where every patient's true PFS is known, what dropping
them costs.

* :func:`administrative_censoring` censors the outcome table only (images and
  labs unchanged): uniform accrual over ``accrual_months``, one data cut-off
  chosen so that ``fraction`` of patients are still progression-free at it.
* :func:`run_survival` fits, on the shared folds (``WORK/folds.csv``), a Cox
  proportional-hazards model on the laboratory values (lifelines
  ``CoxPHFitter`` on ``log1p`` labs standardised on the training fold) and a
  survival CNN (:class:`~prrt_utils.models.networks.FusionNet` of a fusion model whose
  logit is the log-risk, trained with torchsurv's Cox partial likelihood).
  Per-fold results are cached under ``WORK/survival/<config hash>/``.
* :func:`survival_metrics`: Harrell's and Uno's C-index, time-dependent AUROC
  at the horizon and the integrated Brier score (scikit-survival's IPCW
  estimators), plus the C-index against the TRUE uncensored PFS.
* :class:`BreslowEstimator`: the Breslow baseline cumulative hazard of a fitted
  log-risk (written by hand: torchsurv has none; checked against lifelines).
* :func:`classification_bias` and :func:`evaluation_bias`: the paper's
  complete-case design against the truth.
* :func:`km_truth_curves`: Kaplan-Meier of the true PFS beside the estimates
  from censored data and from complete cases (drawn by
  :func:`prrt_utils.io.figures.km_figure`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.utils import concordance_index
from sklearn.metrics import brier_score_loss, roc_auc_score
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv
from torchsurv.loss.cox import neg_partial_log_likelihood

from prrt_utils.data.cohort import PFS_THRESHOLD_MONTHS
from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config
from prrt_utils.models.inputs import CohortData, FoldNormaliser, LabScaler, cohort_data, model_inputs
from prrt_utils.models.networks import LAB_COLUMNS, build_network, get_spec, make_forest
from prrt_utils.models.training import fold_seed, resolve_device, seed_everything

__all__ = [
    "BreslowEstimator",
    "SurvivalConfig",
    "SurvivalError",
    "administrative_censoring",
    "classification_bias",
    "complete_case_summary",
    "evaluation_bias",
    "downsample_volumes",
    "harrell_lifelines",
    "km_truth_curves",
    "run_survival",
    "summarise_survival",
    "survival_metrics",
    "time_grid",
    "censor",
    "chapter_config",
    "concordance_against_truth",
    "fit_survival_models",
    "study_cohort",
    "survival_cached",
    "survival_models",
    "train_survival_stage",
    "useful_thresholds",
]


class SurvivalError(ValueError):
    """Outcome tables or folds that cannot be analysed (names the patient or the fold)."""


# --------------------------------------------------------------------------- censoring


def administrative_censoring(cohort: pd.DataFrame, fraction: float, seed: int = SEED, accrual_months: float = 60.0,
                             horizon_months: float = PFS_THRESHOLD_MONTHS, min_followup_months: float = 0.5) -> pd.DataFrame:
    """Censor PFS at an administrative data cut-off, so that about ``fraction`` of patients are censored.

    Patients enter the study uniformly over ``accrual_months`` (entry ``u_i``,
    drawn with ``seed``); their progression would be seen at ``u_i + PFS_i``.
    The cut-off ``C`` is chosen so that ``round(fraction * n)`` patients have
    ``u_i + PFS_i > C``; their follow-up ``C - u_i`` ends before progression.
    Censoring thus depends on PFS and entry date only (independent of the
    covariates given PFS), the textbook "administrative" censoring.

    Parameters
    ----------
    cohort : DataFrame
        ``patient_id, pfs_months, event``: the TRUE outcome (the synthetic
        cohort has ``event == 1`` for everyone). Patients already censored
        stay censored.
    fraction : float
        Target share of censored patients, in [0, 1).
    seed : int
    accrual_months : float
        Length of the accrual period.
    horizon_months : float
        Threshold of the binary label (12 months in the paper).
    min_followup_months : float
        Follow-up of a patient who entered after ``C`` (only possible for large
        fractions) is set to this value rather than 0.

    Returns
    -------
    DataFrame
        One row per patient: ``patient_id, pfs_true_months, event_true,
        entry_months, followup_months, pfs_months`` (observed: ``min(true PFS,
        follow-up)``), ``event`` (observed progression), ``pfs_short_true``
        (true PFS <= horizon), ``complete_case`` (``event == 1``: the patients
        the paper's design keeps), ``label_known`` (progression seen, or
        follow-up past the horizon) and ``pfs_short_observed`` (the label
        where known, else NaN). ``attrs["cutoff_months"]`` holds ``C``.
    """
    for col in ("patient_id", "pfs_months", "event"):
        if col not in cohort.columns:
            raise SurvivalError(f"administrative_censoring: cohort lacks column {col!r}")
    if not 0.0 <= fraction < 1.0:
        raise SurvivalError(f"censor fraction must lie in [0, 1), got {fraction}")
    pfs = cohort["pfs_months"].to_numpy(dtype=float)
    event_true = cohort["event"].to_numpy(dtype=int)
    if not (np.isfinite(pfs).all() and (pfs > 0).all()):
        raise SurvivalError("administrative_censoring: every pfs_months must be positive")
    n = len(pfs)
    rng = np.random.default_rng(seed)
    entry = rng.uniform(0.0, accrual_months, size=n)
    exit_ = entry + pfs
    k = int(round(fraction * n))
    order = np.sort(exit_)
    # C between the (n-k)-th and (n-k+1)-th exit time: exactly k exits lie after it
    cutoff = float(order[-1] + 1.0) if k == 0 else float((order[n - k - 1] + order[n - k]) / 2 if k < n else 0.0)
    follow = np.maximum(cutoff - entry, min_followup_months)
    observed = np.minimum(pfs, follow)
    event = ((pfs <= follow) & (event_true == 1)).astype(int)
    short_true = (pfs <= horizon_months).astype(int)
    known = (event == 1) | (observed > horizon_months)
    short_obs = np.where(known, ((observed <= horizon_months) & (event == 1)).astype(float), np.nan)
    out = pd.DataFrame(
        {
            "patient_id": cohort["patient_id"].astype(str).to_numpy(),
            "pfs_true_months": pfs,
            "event_true": event_true,
            "entry_months": entry,
            "followup_months": follow,
            "pfs_months": observed,
            "event": event,
            "pfs_short_true": short_true,
            "complete_case": event == 1,
            "label_known": known,
            "pfs_short_observed": short_obs,
        }
    )
    out.attrs["cutoff_months"] = cutoff
    return out


def complete_case_summary(censored: pd.DataFrame, horizon_months: float = PFS_THRESHOLD_MONTHS) -> pd.DataFrame:
    """Share of short PFS and median PFS: truth vs the paper's complete cases vs label-known cases.

    Returns
    -------
    DataFrame
        One row per design: ``design, n, share_short, median_pfs_months``
        (PFS medians of the kept patients' TRUE PFS; the truth row uses all).
    """
    rows = []
    designs = {
        "truth (all patients, true PFS)": np.ones(len(censored), bool),
        "complete cases (paper: censored dropped)": censored["complete_case"].to_numpy(bool),
        "label known (censored after the horizon kept as long)": censored["label_known"].to_numpy(bool),
    }
    for name, keep in designs.items():
        sub = censored[keep]
        label = sub["pfs_short_true"] if name.startswith("truth") else sub["pfs_short_observed"]
        rows.append({"design": name, "n": int(keep.sum()), "share_short": float(label.mean()),
                     "median_true_pfs_months": float(sub["pfs_true_months"].median())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Breslow


class BreslowEstimator:
    """Breslow estimator of the baseline cumulative hazard for a given log-risk (Breslow 1972).

    ``H0(t) = sum over event times t_i <= t of d_i / sum_{j: T_j >= t_i} exp(eta_j)``,
    where ``eta`` is the model's log-risk (log partial hazard). The survival
    function of a patient with log-risk ``eta`` is ``exp(-H0(t) exp(eta))``.
    Written by hand (torchsurv has no baseline estimator); equal to lifelines'
    ``baseline_cumulative_hazard_`` when given lifelines' log partial hazards.

    Attributes
    ----------
    event_times_ : ndarray, shape (K,)
        Distinct event times (months).
    cum_baseline_hazard_ : ndarray, shape (K,)
        ``H0`` at those times.
    """

    def fit(self, log_risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> BreslowEstimator:
        eta = np.asarray(log_risk, dtype=float)
        t = np.asarray(time, dtype=float)
        e = np.asarray(event, dtype=bool)
        risk = np.exp(eta - eta.max())  # scale-free: H0 is rescaled below
        times = np.unique(t[e])
        d = np.array([np.sum(e & (t == s)) for s in times], dtype=float)
        at_risk = np.array([risk[t >= s].sum() for s in times])
        self.shift_ = float(eta.max())
        self.event_times_ = times
        self.cum_baseline_hazard_ = np.cumsum(d / at_risk) * math.exp(-self.shift_)
        return self

    def cumulative_hazard(self, times: Sequence[float]) -> np.ndarray:
        """``H0`` at ``times`` (right-continuous step function, 0 before the first event), shape (T,)."""
        idx = np.searchsorted(self.event_times_, np.asarray(times, dtype=float), side="right")
        return np.concatenate([[0.0], self.cum_baseline_hazard_])[idx]

    def survival_function(self, log_risk: np.ndarray, times: Sequence[float]) -> np.ndarray:
        """``S(t | eta) = exp(-H0(t) exp(eta))``, shape (n, T)."""
        eta = np.asarray(log_risk, dtype=float)
        return np.exp(-np.outer(np.exp(eta), self.cumulative_hazard(times)))


# --------------------------------------------------------------------------- metrics


def _surv_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    return Surv.from_arrays(event=np.asarray(event, dtype=bool), time=np.asarray(time, dtype=float))


def time_grid(time: np.ndarray, start: float = 3.0, quantile: float = 0.8, n: int = 20) -> np.ndarray:
    """Times (months) for the integrated Brier score: ``start`` to the ``quantile`` of observed times."""
    hi = float(np.quantile(np.asarray(time, dtype=float), quantile))
    return np.linspace(start, max(hi, start + 1.0), n)


def harrell_lifelines(time: np.ndarray, event: np.ndarray, log_risk: np.ndarray) -> float:
    """Harrell's C from ``lifelines.utils.concordance_index`` (risk negated: it expects survival-like scores)."""
    return float(concordance_index(time, -np.asarray(log_risk, dtype=float), event))


def survival_metrics(train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray, test_event: np.ndarray,
                     log_risk: np.ndarray, survival: np.ndarray | None, times: np.ndarray, horizon: float = PFS_THRESHOLD_MONTHS,
                     true_time: np.ndarray | None = None) -> dict[str, float]:
    """Discrimination and overall error of survival predictions on one test fold (scikit-survival).

    Parameters
    ----------
    train_time, train_event : array, shape (n_train,)
        Observed outcome of the training part (for the censoring distribution of the IPCW estimators).
    test_time, test_event : array, shape (n_test,)
        Observed outcome of the test part.
    log_risk : array, shape (n_test,)
        Higher = earlier progression.
    survival : array, shape (n_test, T) or None
        Predicted survival probabilities at ``times``.
    times : array, shape (T,)
        Grid for the integrated Brier score (months); points outside the test
        follow-up are dropped.
    horizon : float
        Time of the time-dependent AUROC (12 months).
    true_time : array, shape (n_test,), optional
        TRUE uncensored PFS: adds ``c_true``, the C-index every estimator tries to recover.

    Returns
    -------
    dict
        ``harrell`` (``concordance_index_censored``), ``uno``
        (``concordance_index_ipcw``, truncated at the last grid time),
        ``auc_horizon`` (``cumulative_dynamic_auc``), ``ibs``
        (``integrated_brier_score``; NaN without ``survival``) and ``c_true``.
    """
    tr = _surv_array(train_time, train_event)
    risk = np.asarray(log_risk, dtype=float)
    out: dict[str, float] = {}
    out["harrell"] = float(concordance_index_censored(np.asarray(test_event, bool), np.asarray(test_time, float), risk)[0])
    # The IPCW weights need the training censoring distribution G > 0, which fails after the last training
    # time; test follow-up is therefore truncated at tau (< last training time, >= every time scored), which
    # changes no case/control status at the horizon and no Brier term at a grid time below tau.
    times = np.asarray(times, dtype=float)
    tau = float(min(max(np.max(times), horizon) + 1e-6, np.max(train_time) * (1 - 1e-9)))
    over = np.asarray(test_time, float) > tau
    te = _surv_array(np.where(over, tau, test_time), np.where(over, 0, test_event))
    out["uno"] = float(concordance_index_ipcw(tr, te, risk, tau=tau)[0])
    auc, _ = cumulative_dynamic_auc(tr, te, risk, [horizon])
    out["auc_horizon"] = float(auc[0])
    keep = (times >= te["time"].min()) & (times < te["time"].max())
    if survival is not None and keep.sum() >= 2:
        out["ibs"] = float(integrated_brier_score(tr, te, np.asarray(survival)[:, keep], times[keep]))
    else:
        out["ibs"] = math.nan
    if true_time is not None:
        out["c_true"] = float(concordance_index_censored(np.ones(len(risk), bool), np.asarray(true_time, float), risk)[0])
    return out


# --------------------------------------------------------------------------- configuration and models


@dataclasses.dataclass(frozen=True)
class SurvivalConfig(Config):
    """Chapter 07's survival analysis.

    Attributes
    ----------
    censor_fraction : float
        Share of patients censored administratively (:func:`administrative_censoring`).
    accrual_months : float
    seed : int
        Censoring draw and the survival CNN's seeds (:func:`~prrt_utils.models.training.fold_seed`).
    horizon_months : float
        12 months (the paper's split).
    cnn_model : str
        Registry model whose :class:`~prrt_utils.models.networks.FusionNet` is trained
        with the Cox loss ("" = no survival CNN).
    epochs, batch_size, lr, weight_decay : int, int, float, float
        AdamW (decoupled decay 0.01; the paper's Adam L2 penalty of 0.2 is for
        its classifier) at the paper's learning rate 0.01 on torchsurv's
        negative Cox partial log-likelihood (Efron ties). 20 epochs: 50 did not
        raise the C-index on repeat 0 of the synthetic cohort.
    dropout : float
    downsample : int
        Average-pooling factor applied to the volumes before the survival CNN
        (2: ``(75, 50, 50)`` -> ``(37, 25, 25)``), 8 times fewer voxels, so that
        15 folds train in about a minute on 2 CPU cores. The classification
        models of chapters 03-04 use full resolution.
    device : str
    """

    censor_fraction: float = 0.3
    accrual_months: float = 60.0
    seed: int = SEED
    horizon_months: float = PFS_THRESHOLD_MONTHS
    cnn_model: str = "pet_fusion"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.01
    weight_decay: float = 0.01
    dropout: float = 0.1
    downsample: int = 2
    device: str = "auto"


def downsample_volumes(volumes: dict[str, np.ndarray], factor: int) -> dict[str, np.ndarray]:
    """Average-pool ``(N, 1, D, H, W)`` volumes by ``factor`` (``torch.nn.functional.avg_pool3d``; floor)."""
    if factor <= 1:
        return dict(volumes)
    out = {}
    for m, v in volumes.items():
        with torch.no_grad():
            out[m] = torch.nn.functional.avg_pool3d(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)),
                                                    factor).numpy()
    return out


def _cox_labs_fold(labs_tr: np.ndarray, t_tr: np.ndarray, e_tr: np.ndarray, labs_te: np.ndarray,
                   times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lifelines Cox on fold-standardised log-labs: (log-risk test, survival test at ``times``, log-risk train)."""
    scaler = LabScaler().fit(labs_tr)
    cols = list(LAB_COLUMNS)
    xtr = pd.DataFrame(scaler.transform(labs_tr).astype(float), columns=cols)
    xte = pd.DataFrame(scaler.transform(labs_te).astype(float), columns=cols)
    cph = CoxPHFitter().fit(xtr.assign(T=t_tr, E=e_tr), duration_col="T", event_col="E")
    surv = cph.predict_survival_function(xte, times=times).to_numpy().T
    return (cph.predict_log_partial_hazard(xte).to_numpy(), surv, cph.predict_log_partial_hazard(xtr).to_numpy())


def _train_cox_cnn(cfg: SurvivalConfig, data: CohortData, t: np.ndarray, e: np.ndarray, train_rows: np.ndarray,
                   test_rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """FusionNet trained with torchsurv's Cox partial likelihood; returns log-risk (train, test) and loss per epoch."""
    spec = get_spec(cfg.cnn_model)
    device = resolve_device(cfg.device)
    seed_everything(seed)
    norm = FoldNormaliser().fit({m: data.volumes[m][train_rows] for m in spec.image_inputs})
    scaler = LabScaler().fit(data.labs[train_rows])
    xtr = [torch.from_numpy(x).to(device) for x in model_inputs(spec, data, train_rows, norm, scaler)]
    xte = [torch.from_numpy(x).to(device) for x in model_inputs(spec, data, test_rows, norm, scaler)]
    tt = torch.from_numpy(t[train_rows].astype(np.float32)).to(device)
    ee = torch.from_numpy(e[train_rows].astype(bool)).to(device)
    net = build_network(spec, n_labs=data.labs.shape[1], img_size=data.volumes[spec.image_inputs[0]].shape[2:],
                        dropout_prob=cfg.dropout).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_rows)
    losses = []
    for _ in range(cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        batches = list(torch.split(order, cfg.batch_size))
        if len(batches) > 1 and len(batches[-1]) < 4:  # batch norm and a risk set need a few patients
            batches[-2] = torch.cat([batches[-2], batches.pop()])
        total = 0.0
        for idx in batches:
            idx = idx.to(device)
            if not bool(ee[idx].any()):
                continue  # no event: the partial likelihood is constant
            opt.zero_grad(set_to_none=True)
            loss = neg_partial_log_likelihood(net(*[x[idx] for x in xtr]), ee[idx], tt[idx], ties_method="efron")
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    net.eval()
    with torch.no_grad():
        risk_tr = torch.cat([net(*[x[i : i + 32] for x in xtr]) for i in range(0, n, 32)]).double().cpu().numpy()
        risk_te = torch.cat([net(*[x[i : i + 32] for x in xte]) for i in range(0, len(test_rows), 32)]).double().cpu().numpy()
    return risk_tr, risk_te, losses


def _fold_file(root: Path, model: str, repeat: int, fold: int) -> Path:
    return root / model / f"r{repeat}_f{fold}.parquet"


def _cache_root(cfg: SurvivalConfig, work_dir: Path, censored: pd.DataFrame) -> tuple[Path, dict[str, Any]]:
    """``WORK/survival/<key>/`` of these settings, folds, inputs and censored outcome, and the key's parts."""
    out_key = {"config": cfg.to_dict(),
               "folds": store.sha256_file(work_dir / "folds.csv") if (work_dir / "folds.csv").exists() else "",
               "inputs": store.sha256_file(work_dir / "preprocessed" / "index.csv")
               if (work_dir / "preprocessed" / "index.csv").exists() else "",
               "outcome": pd.util.hash_pandas_object(censored[["patient_id", "pfs_months", "event"]], index=False).sum().item()}
    key = cfg.hash() + "_" + hashlib.sha256(json.dumps(out_key, sort_keys=True).encode()).hexdigest()[:8]
    return work_dir / "survival" / key, out_key


def survival_models(cfg: SurvivalConfig) -> list[str]:
    """The survival models fitted on every fold: ``cox_labs`` and, when ``cfg.cnn_model`` is set, its Cox CNN."""
    return ["cox_labs"] + ([f"cox_{cfg.cnn_model}"] if cfg.cnn_model else [])


def survival_cached(cfg: SurvivalConfig, work_dir: str | Path, censored: pd.DataFrame,
                    folds: pd.DataFrame | None = None) -> bool:
    """Whether every fold of every survival model is already in the cache of :func:`run_survival`.

    Then :func:`run_survival` needs no model inputs (it only reads); otherwise the
    caller loads them first (:func:`fit_survival_models` does).
    """
    work_dir = Path(work_dir)
    if folds is None:
        folds = pd.read_csv(work_dir / "folds.csv", dtype={"patient_id": str})
    root, _ = _cache_root(cfg, work_dir, censored)
    pairs = folds[["repeat", "fold"]].drop_duplicates().itertuples(index=False)
    return all(_fold_file(root, m, int(r), int(f)).exists() for r, f in pairs for m in survival_models(cfg))


def fit_survival_models(cfg: SurvivalConfig, work_dir: str | Path, censored: pd.DataFrame, folds: pd.DataFrame,
                        n_jobs: int = 2) -> pd.DataFrame:
    """Chapter 07's survival models: read from the cache when complete, else fitted with the PET volumes loaded.

    Parameters
    ----------
    cfg, work_dir, censored, folds
        As :func:`run_survival`.
    n_jobs : int
        CPU cores the chapter may use; torch gets one thread per two (on a shared
        two-core machine two threads made each fold three times slower).

    Returns
    -------
    DataFrame
        :func:`run_survival`'s table (``attrs["cache"]``: the cache folder).
    """
    data = None if survival_cached(cfg, work_dir, censored, folds) else cohort_data(work_dir, modalities=("pet",))
    return run_survival(cfg, work_dir, censored, data, folds, threads=max(1, int(n_jobs) // 2))


def run_survival(cfg: SurvivalConfig, work_dir: str | Path, censored: pd.DataFrame, data: CohortData | None = None,
                 folds: pd.DataFrame | None = None, threads: int | None = None) -> pd.DataFrame:
    """Fit the survival models on every fold of ``WORK/folds.csv``; cached per fold under ``WORK/survival/``.

    Parameters
    ----------
    cfg : SurvivalConfig
    work_dir : path
        ``WORK``: reads ``folds.csv``; writes ``survival/<key>/`` where the key
        hashes ``cfg``, the folds, the preprocessing index (volume checksums) and
        the censored outcome. A fold whose file
        exists is read, not refitted.
    censored : DataFrame
        :func:`administrative_censoring` output (``patient_id, pfs_months, event, pfs_true_months``).
    data : CohortData, optional
        Model inputs (labs and the CNN's volumes) in any patient order; needed
        only when a CNN fold is not cached.
    folds : DataFrame, optional
        ``repeat, fold, patient_id, split``; default ``WORK/folds.csv``.
    threads : int, optional
        ``torch.set_num_threads`` while training.

    Returns
    -------
    DataFrame
        One row per (model, repeat, fold): ``model, repeat, fold, n_test,
        events_test, harrell, harrell_lifelines, uno, auc_horizon, ibs, c_true,
        seconds``. ``attrs["predictions"]`` holds the per-patient test
        predictions (``model, repeat, fold, patient_id, log_risk, p_short``,
        ``p_short`` = 1 - S(horizon)).
    """
    work_dir = Path(work_dir)
    if folds is None:
        folds = pd.read_csv(work_dir / "folds.csv", dtype={"patient_id": str})
    root, out_key = _cache_root(cfg, work_dir, censored)
    if not (root / "config.yaml").exists():
        store.write_text(root / "config.yaml", cfg.to_yaml())
        store.write_json(root / "key.json", out_key)
    outcome = censored.set_index("patient_id")
    ids = sorted(folds["patient_id"].unique())
    missing = [p for p in ids if p not in outcome.index]
    if missing:
        raise SurvivalError(f"patient {missing[0]} is in the folds but not in the censored outcome table")
    times = time_grid(outcome.loc[ids, "pfs_months"].to_numpy())
    models = survival_models(cfg)
    small: CohortData | None = None  # the CNN's downsampled inputs, made once when first needed
    rows, preds = [], []
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        for (r, f), fold in folds.groupby(["repeat", "fold"]):
            tr_ids = sorted(fold.loc[fold["split"] == "train", "patient_id"])
            te_ids = sorted(fold.loc[fold["split"] == "test", "patient_id"])
            t_tr, e_tr = outcome.loc[tr_ids, "pfs_months"].to_numpy(float), outcome.loc[tr_ids, "event"].to_numpy(int)
            t_te, e_te = outcome.loc[te_ids, "pfs_months"].to_numpy(float), outcome.loc[te_ids, "event"].to_numpy(int)
            for model in models:
                path = _fold_file(root, model, int(r), int(f))
                if path.exists():
                    cached = pd.read_parquet(path)
                else:
                    t0 = time.perf_counter()
                    if data is None:
                        raise SurvivalError(f"{path} is not cached and no model inputs were given")
                    rows_tr, rows_te = data.rows(tr_ids), data.rows(te_ids)
                    if model == "cox_labs":
                        lr_te, _, lr_tr = _cox_labs_fold(data.labs[rows_tr], t_tr, e_tr, data.labs[rows_te], times)
                        loss = []
                    else:
                        seed = fold_seed(cfg.seed, int(r), int(f), model)
                        full_t = np.full(len(data.patient_ids), np.nan)
                        full_e = np.zeros(len(data.patient_ids), int)
                        full_t[rows_tr], full_e[rows_tr] = t_tr, e_tr
                        if small is None:
                            need = get_spec(cfg.cnn_model).image_inputs
                            small = dataclasses.replace(data, volumes=downsample_volumes(
                                {m: data.volumes[m] for m in need}, cfg.downsample))
                        lr_tr, lr_te, loss = _train_cox_cnn(cfg, small, full_t, full_e, rows_tr, rows_te, seed)
                    cached = pd.concat([
                        pd.DataFrame({"patient_id": tr_ids, "split": "train", "log_risk": lr_tr}),
                        pd.DataFrame({"patient_id": te_ids, "split": "test", "log_risk": lr_te}),
                    ], ignore_index=True)
                    cached.attrs = {}
                    cached["seconds"] = time.perf_counter() - t0
                    cached["final_loss"] = loss[-1] if loss else math.nan
                    store.write_parquet(path, cached)
                tr = cached[cached["split"] == "train"].set_index("patient_id").loc[tr_ids]
                te = cached[cached["split"] == "test"].set_index("patient_id").loc[te_ids]
                # survival functions from the Breslow baseline of the TRAINING fold (both models, one code path)
                bres = BreslowEstimator().fit(tr["log_risk"].to_numpy(), t_tr, e_tr)
                surv = bres.survival_function(te["log_risk"].to_numpy(), times)
                s_h = bres.survival_function(te["log_risk"].to_numpy(), [cfg.horizon_months])[:, 0]
                met = survival_metrics(t_tr, e_tr, t_te, e_te, te["log_risk"].to_numpy(), surv, times,
                                       cfg.horizon_months, outcome.loc[te_ids, "pfs_true_months"].to_numpy(float))
                met["harrell_lifelines"] = harrell_lifelines(t_te, e_te, te["log_risk"].to_numpy())
                rows.append({"model": model, "repeat": int(r), "fold": int(f), "n_test": len(te_ids),
                             "events_test": int(e_te.sum()), **met, "seconds": float(cached["seconds"].iloc[0])})
                preds.append(pd.DataFrame({"model": model, "repeat": int(r), "fold": int(f), "patient_id": te_ids,
                                           "log_risk": te["log_risk"].to_numpy(), "p_short": 1.0 - s_h}))
    finally:
        torch.set_num_threads(old_threads)
    table = pd.DataFrame(rows)
    table.attrs["predictions"] = pd.concat(preds, ignore_index=True)
    table.attrs["cache"] = str(root)
    return table


def summarise_survival(table: pd.DataFrame, metrics: Sequence[str] = ("harrell", "uno", "auc_horizon", "ibs", "c_true")
                       ) -> pd.DataFrame:
    """Mean ± standard error over repeats (each repeat = mean of its folds), one row per model."""
    per = table.groupby(["model", "repeat"])[list(metrics)].mean()
    g = per.groupby("model")
    mean, se = g.mean(), g.std(ddof=1) / np.sqrt(g.size().to_numpy()[:, None])
    out = pd.DataFrame(index=mean.index)
    for m in metrics:
        out[m] = [f"{a:.3f} ± {b:.3f}" for a, b in zip(mean[m], se[m], strict=True)]
    return out.reset_index()


# --------------------------------------------------------------------------- bias of the complete-case design


def evaluation_bias(predictions: pd.DataFrame, censored: pd.DataFrame) -> pd.DataFrame:
    """AUROC of stored classification predictions against the truth vs under the paper's complete-case design.

    The models were trained on the uncensored cohort; only their evaluation
    changes. Per model and repeat (pooled out-of-fold predictions): AUROC and
    prevalence against the TRUE 12-month label of every patient, against the
    observed label of the complete cases (the paper keeps patients with an
    observed event only), and of the label-known patients.

    Returns
    -------
    DataFrame
        ``model, repeat, design, n, prevalence, auroc``.
    """
    c = censored.set_index("patient_id")
    rows = []
    for (m, r), sub in predictions.groupby(["model", "repeat"], sort=False):
        sub = sub.set_index("patient_id")
        o = c.loc[sub.index]
        designs = {
            "truth": (np.ones(len(sub), bool), o["pfs_short_true"]),
            "complete cases": (o["complete_case"].to_numpy(bool), o["pfs_short_observed"]),
            "label known": (o["label_known"].to_numpy(bool), o["pfs_short_observed"]),
        }
        for name, (keep, label) in designs.items():
            y = label[keep].astype(int).to_numpy()
            p = sub.loc[keep, "prob"].to_numpy()
            rows.append({"model": m, "repeat": int(r), "design": name, "n": int(keep.sum()),
                         "prevalence": float(y.mean()),
                         "auroc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan})
    return pd.DataFrame(rows)


def _bias_forest(spec: Any, seed: int, name: str, r: int, f: int, ids: list[str], te: list[str], x_tr: np.ndarray,
                 y_tr: np.ndarray, x_te: np.ndarray) -> pd.DataFrame:
    rf = make_forest(spec, fold_seed(seed, r, f, "rf_labs")).fit(x_tr, y_tr)
    return pd.DataFrame({"design": name, "repeat": r, "fold": f, "patient_id": te,
                         "prob": rf.predict_proba(x_te)[:, 1], "n_train": len(ids)})


def classification_bias(censored: pd.DataFrame, labs: pd.DataFrame, folds: pd.DataFrame,
                        survival_predictions: pd.DataFrame | None = None, seed: int = SEED,
                        n_jobs: int = 2) -> pd.DataFrame:
    """Train the paper's laboratory Random Forest under three designs and score all against the truth.

    Designs (training part of each fold; test part always every test patient):
    ``oracle`` (true label of every patient: what no real study has),
    ``complete cases`` (the paper: censored patients dropped), ``label known``
    (censored patients kept when followed past the horizon, as long PFS).
    With ``survival_predictions`` (from :func:`run_survival`), the Cox models'
    ``p_short = 1 - S(12 months)`` are scored the same way: they use every
    patient, censored ones included.

    Returns
    -------
    DataFrame
        Per design and repeat (pooled out-of-fold): ``design, repeat, n_train_mean,
        auroc_true`` (against the TRUE label of all patients), ``mean_prob``,
        ``true_prevalence``, ``calibration_in_large`` (mean_prob - true prevalence),
        ``brier_true``.
    """
    spec = get_spec("rf_labs")
    c = censored.set_index("patient_id")
    lab = labs.set_index("patient_id")[list(LAB_COLUMNS)]
    jobs = []
    for (r, f), fold in folds.groupby(["repeat", "fold"]):
        tr = sorted(fold.loc[fold["split"] == "train", "patient_id"])
        te = sorted(fold.loc[fold["split"] == "test", "patient_id"])
        designs = {
            "RF, oracle (true labels, no censoring)": (np.ones(len(tr), bool), c.loc[tr, "pfs_short_true"]),
            "RF, complete cases (paper)": (c.loc[tr, "complete_case"].to_numpy(bool), c.loc[tr, "pfs_short_observed"]),
            "RF, label known": (c.loc[tr, "label_known"].to_numpy(bool), c.loc[tr, "pfs_short_observed"]),
        }
        for name, (keep, label) in designs.items():
            ids = [p for p, k in zip(tr, keep, strict=True) if k]
            jobs.append((name, int(r), int(f), ids, te, np.log1p(lab.loc[ids].to_numpy(float)),
                         label[keep].astype(int).to_numpy(), np.log1p(lab.loc[te].to_numpy(float))))
    # 45 small forests: two processes (joblib) halve the time; threads inside one forest only add overhead.
    # Each forest has its fold's seed, so the result does not depend on the number of processes.
    preds = Parallel(n_jobs=n_jobs)(delayed(_bias_forest)(spec, seed, *job) for job in jobs)
    frame = pd.concat(preds, ignore_index=True)
    if survival_predictions is not None:
        sp = survival_predictions.rename(columns={"p_short": "prob"})
        for model, sub in sp.groupby("model", sort=False):
            frame = pd.concat([frame, sub.assign(design=f"{model} (uses censored patients)", n_train=np.nan)
                               [["design", "repeat", "fold", "patient_id", "prob", "n_train"]]], ignore_index=True)
    rows = []
    for (d, r), sub in frame.groupby(["design", "repeat"], sort=False):
        y = c.loc[sub["patient_id"], "pfs_short_true"].to_numpy(int)
        p = sub["prob"].to_numpy()
        rows.append({"design": d, "repeat": int(r), "n_train_mean": float(sub.groupby("fold")["n_train"].first().mean()),
                     "auroc_true": float(roc_auc_score(y, p)), "mean_prob": float(p.mean()),
                     "true_prevalence": float(y.mean()), "calibration_in_large": float(p.mean() - y.mean()),
                     "brier_true": float(brier_score_loss(y, p))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figures


def km_truth_curves(censored: pd.DataFrame) -> pd.DataFrame:
    """Kaplan-Meier of the TRUE PFS beside the estimate from censored data and from complete cases only.

    Lifelines ``KaplanMeierFitter``; :func:`prrt_utils.io.figures.km_figure` draws the result.

    Returns
    -------
    DataFrame
        ``group, time_months, survival``: one step curve per group, the truth first.
    """
    curves = {
        "true PFS, all patients (unknowable in practice)": (censored["pfs_true_months"], np.ones(len(censored))),
        "censored data, censored patients kept (Kaplan-Meier)": (censored["pfs_months"], censored["event"]),
        "complete cases only (censored patients dropped)": (censored.loc[censored["complete_case"], "pfs_months"],
                                                            np.ones(int(censored["complete_case"].sum()))),
    }
    parts = []
    for name, (t, e) in curves.items():
        sf = KaplanMeierFitter().fit(t, e).survival_function_.iloc[:, 0]
        parts.append(pd.DataFrame({"group": name, "time_months": sf.index.to_numpy(dtype=float), "survival": sf.to_numpy()}))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- chapter 07: what its cells show


def chapter_config(censor_fraction: float = 0.3, seed: int = SEED, horizon_months: float = PFS_THRESHOLD_MONTHS,
                   epochs: int = 0) -> SurvivalConfig:
    """Chapter 07's :class:`SurvivalConfig` from its page parameters; ``epochs`` 0 keeps the default."""
    return SurvivalConfig(censor_fraction=censor_fraction, seed=seed, horizon_months=horizon_months,
                          **({"epochs": int(epochs)} if epochs else {}))


def censor(cohort: pd.DataFrame, cfg: SurvivalConfig) -> pd.DataFrame:
    """:func:`administrative_censoring` of ``cohort`` with the settings of ``cfg``."""
    return administrative_censoring(cohort, cfg.censor_fraction, cfg.seed, cfg.accrual_months, cfg.horizon_months)


def train_survival_stage(work_dir: str | Path, censor_fraction: float = 0.3, seed: int = SEED,
                         horizon_months: float = PFS_THRESHOLD_MONTHS, survival_epochs: int = 0,
                         n_jobs: int = 2) -> pd.DataFrame:
    """Chapter 07's training as a stage of the book, run before the read-only pages.

    The same settings (the page's parameters) give the same cache key, so the
    page then only reads the folds this stage fitted (:func:`survival_cached`).

    Returns
    -------
    DataFrame
        :func:`fit_survival_models`'s table.
    """
    cfg = chapter_config(censor_fraction, seed, horizon_months, epochs=survival_epochs)
    folds, cohort = study_cohort(work_dir)
    return fit_survival_models(cfg, work_dir, censor(cohort, cfg), folds, n_jobs=n_jobs)


def study_cohort(work_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``WORK/folds.csv`` and the cohort rows of the patients in it, sorted by id: ``(folds, cohort)``."""
    work_dir = Path(work_dir)
    folds = pd.read_csv(work_dir / "folds.csv", dtype={"patient_id": str})
    cohort = pd.read_csv(work_dir / "cohort" / "cohort.csv", dtype={"patient_id": str})
    cohort = cohort[cohort["patient_id"].isin(folds["patient_id"])].sort_values("patient_id").reset_index(drop=True)
    return folds, cohort


def concordance_against_truth(table: pd.DataFrame) -> pd.DataFrame:
    """Per survival model, mean over folds of Harrell's and Uno's C and the C against the true PFS, and their gaps.

    Returns
    -------
    DataFrame
        Indexed by model: ``harrell, uno, c_true, harrell - c_true, uno - c_true``.
    """
    per = table.groupby("model")[["harrell", "uno", "c_true"]].mean()
    return per.assign(**{"harrell - c_true": per["harrell"] - per["c_true"], "uno - c_true": per["uno"] - per["c_true"]})


def useful_thresholds(curves: pd.DataFrame, models: Sequence[str], names: dict[str, str] | None = None,
                      tolerance: float = 1e-9) -> pd.DataFrame:
    """Where each model's decision curve lies above both "follow up everyone" and "follow up no one".

    Parameters
    ----------
    curves : DataFrame
        ``threshold, model, net_benefit`` with the rows ``all`` and ``none``
        (:func:`prrt_utils.analysis.calibration.decision_curve_over_repeats`).

    Returns
    -------
    DataFrame
        ``model`` (display name) and ``thresholds where it beats both defaults``:
        ``"lo–hi (k of n)"`` or ``"none"``.
    """
    names = names or {}
    wide = curves.pivot(index="threshold", columns="model", values="net_benefit")
    best_default = wide[["all", "none"]].max(axis=1)
    useful = {m: wide.index[wide[m] > best_default + tolerance] for m in models}
    return pd.DataFrame({
        "model": [names.get(m, m) for m in models],
        "thresholds where it beats both defaults": [
            f"{u.min():.2f}–{u.max():.2f} ({len(u)} of {len(wide)})" if len(u) else "none" for u in useful.values()],
    })


