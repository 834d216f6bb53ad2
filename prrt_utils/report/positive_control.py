"""The positive control at full size (issue 14): does the pipeline learn what the images decide?

A cohort whose outcome is fixed by a strong quantity visible on PET (the tumour burden;
``prrt synth --scenario positive-control``, Bayes AUROC >= 0.95) goes through every real stage
(generator, cohort, preprocessing, the cross-validation runner) and the PET-only CNN is trained
with the book's recipe under the book's cross-validation. Two references are cheap and trained
beside it: the radiomics logistic regression (hand-made PET burden features) and the labs
logistic regression. Then the PET-only CNN is trained again on the SAME folds with the outcome
permuted: it must score at chance. A pipeline that fails either half is broken, whatever else passes.

Each repeat of the shuffled run has its own permutation (fixed by the seed and the repeat), not one
permutation for all: the cross-validated AUROC of ONE permutation varies by chance about as much as
the issue's tolerance (+-0.07). Measured on the book's full-size control: with one permutation
(seed 0) the PET-only CNN scored 0.41 and the radiomics logistic regression 0.42, and the radiomics
and labs logistic regressions over six permutations ranged 0.39-0.62 on the same folds. With a
permutation per repeat, the mean over repeats averages five independent permutations.

The labels are permuted WITHIN each test fold of the repeat (:func:`fold_shuffled_labels`), so every
fold keeps the numbers of short and long PFS of the true run in its training and its test part: the
folds stay stratified for the shuffled outcome too, and a fold that can be trained on the true labels
can be trained on the shuffled ones (a free permutation left a training part of the 21-patient test
book with one short-PFS patient, and a test part with none).

:func:`run_positive_control` is the stage (cached like every stage: a second run reuses the
generated cohort, the preprocessing and every finished fold); :func:`read_positive_control` reads
what it stored and judges it against the issue's thresholds (:data:`THRESHOLDS`) into a
:class:`PositiveControlResult`, which the book's page ``positive_control`` shows.

Files: the cohort in ``data/synthetic-positive-control/`` (beside the synthetic cohort), the work
in ``WORK/positive-control/`` (``WORK/positive-control-<profile>/`` for another training profile):
``cohort/``, ``preprocessed/``, ``folds.csv``, ``results/<model>/`` as any work folder, and
``shuffled/r<repeat>/`` with that repeat's permuted cohort table, that repeat's rows of the same
``folds.csv`` and its own ``results/pet_only/`` (``preprocessed/`` and ``cache/`` are links to the
control's: the volumes are the same). The folds of every run are trained in one pool of workers. ``config.yaml`` records the settings; a folder made with other settings is started over
(the folder belongs to this stage alone).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.analysis import metrics
from prrt_utils.data.cohort import CohortConfig, build_cohort
from prrt_utils.data.folds import CVConfig
from prrt_utils.data.preprocess import PreprocessConfig, run_preprocessing
from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config
from prrt_utils.models import crossval, stored
from prrt_utils.models.stored import GridError
from prrt_utils.models.training import TrainConfig
from prrt_utils.synthetic import SynthConfig, generate_cohort

__all__ = [
    "CEILING_NAMES",
    "DATA_DIR",
    "MODELS",
    "SHUFFLED_MODEL",
    "THRESHOLDS",
    "PositiveControlConfig",
    "PositiveControlPage",
    "display_names",
    "positive_control_page",
    "PositiveControlResult",
    "read_positive_control",
    "run_positive_control",
    "shuffled_labels",
    "work_folder",
]

DATA_DIR = Path("data/synthetic-positive-control")
"""Where the book generates the positive-control cohort (beside ``data/synthetic``)."""

MODELS = ("pet_only", "radiomics_lr", "lr_labs")
"""Trained on the true outcome: the PET-only CNN (the one judged) and two cheap references."""

SHUFFLED_MODEL = "pet_only"
"""Trained again on the permuted outcome, inside the same folds."""

SHUFFLED_NAME = "pet_only_shuffled"
"""Name of the shuffled-label run in the result tables."""

THRESHOLDS = {
    "mean_auroc": 0.80,
    "repeat_auroc": 0.75,
    "train_loss": 0.5,
    "shuffled_tolerance": 0.07,
}
"""The issue's pass marks for the PET-only CNN at full size (116 patients, 5 x 3 CV): mean CV
AUROC >= 0.80, every repeat >= 0.75, training loss < 0.5; shuffled labels 0.50 +- 0.07."""

FULL_SIZE = {"n_patients": 116, "n_repeats": 5, "n_splits": 3}
"""The size at which the thresholds are the issue's claim; smaller runs are shown, not judged."""


class PositiveControlError(RuntimeError):
    """The positive control's stored results are missing or incomplete."""


@dataclasses.dataclass(frozen=True)
class PositiveControlConfig(Config):
    """Settings of the positive-control stage.

    Attributes
    ----------
    n_patients, seed : int
        Size and seed of the generated cohort (the book's: 116 and its seed); the seed also fixes the
        splits, the initial weights and the permutation of the shuffled labels.
    n_repeats, n_splits : int
        Repeated stratified cross-validation (the book's 5 x 3).
    epochs : int
        0 keeps the profile's number of epochs.
    profile : str
        Training recipe (:meth:`prrt_utils.models.training.TrainConfig.profile`).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    """

    n_patients: int = 116
    seed: int = SEED
    n_repeats: int = 5
    n_splits: int = 3
    epochs: int = 0
    profile: str = "default"
    device: str = "auto"

    def train_config(self) -> Any:

        return TrainConfig.profile(self.profile, seed=self.seed, device=self.device,
                                   **({"epochs": int(self.epochs)} if self.epochs else {}))

    def cv_config(self) -> Any:

        return CVConfig(n_splits=self.n_splits, n_repeats=self.n_repeats, seed=self.seed)

    def synth_config(self) -> Any:

        return SynthConfig(n_patients=self.n_patients, seed=self.seed, scenario="positive-control")

    @property
    def full_size(self) -> bool:
        """Whether this is the size the issue's thresholds are stated for (and the default recipe)."""
        return (self.n_patients, self.n_repeats, self.n_splits) == tuple(FULL_SIZE.values()) and not self.epochs

    def identity(self) -> dict[str, Any]:
        """What the stored results depend on (``device`` only says where they ran)."""
        return {k: v for k, v in self.to_dict().items() if k != "device"}


def work_folder(work_dir: str | Path, profile: str = "default") -> Path:
    """``WORK/positive-control`` (``WORK/positive-control-<profile>`` for a profile other than the default)."""
    return Path(work_dir) / ("positive-control" if profile == "default" else f"positive-control-{profile}")


def shuffled_labels(y: np.ndarray, seed: int, repeat: int = 0) -> np.ndarray:
    """A permutation of the outcome fixed by ``seed`` and ``repeat`` (the same share of short PFS, no link to any input)."""
    return np.random.default_rng([int(seed), 14, int(repeat)]).permutation(np.asarray(y))


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (relative), replacing whatever ``link`` was."""
    if link.is_symlink() and os.readlink(link) == os.path.relpath(target, link.parent):
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link, target_is_directory=True)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (a rewrite would not change a hash, but keeps mtimes)."""
    if not path.is_file() or path.read_text() != text:
        store.write_text(path, text)


def fold_shuffled_labels(labels: pd.Series, folds: pd.DataFrame, seed: int, repeat: int) -> pd.Series:
    """The outcome permuted within each test fold of ``repeat`` (:func:`shuffled_labels`; fixed by seed, repeat, fold).

    Parameters
    ----------
    labels : Series
        0/1 outcome indexed by ``patient_id``.
    folds : DataFrame
        ``WORK/folds.csv`` (every patient is tested exactly once per repeat).

    Returns
    -------
    Series
        The permuted outcome, same index; each test fold (and so each training part) keeps its counts.
    """
    out = labels.copy()
    tests = folds[(folds["repeat"] == repeat) & (folds["split"] == "test")]
    for fold, g in tests.groupby("fold"):
        ids = g["patient_id"].astype(str).tolist()
        out.loc[ids] = shuffled_labels(labels.loc[ids].to_numpy(), seed, repeat * 1000 + int(fold) + 1)
    return out


def _prepare_shuffled(work: Path, seed: int) -> list[Path]:
    """``work/shuffled/r<k>`` per repeat: the outcome permuted, repeat k's rows of the SAME folds, links to the volumes."""

    cohort = crossval.eligible_cohort(work, "pfs_short")
    folds = pd.read_csv(work / "folds.csv", dtype={"patient_id": str})
    out = []
    for repeat in sorted(folds["repeat"].unique()):
        sub = work / "shuffled" / f"r{int(repeat)}"
        y = fold_shuffled_labels(cohort.set_index("patient_id")["pfs_short"], folds, seed, int(repeat))
        labels = cohort.assign(pfs_short=cohort["patient_id"].map(y).astype(int).to_numpy())
        _write_if_changed(sub / "cohort" / "cohort.csv", labels.to_csv(index=False))
        _write_if_changed(sub / "folds.csv", folds[folds["repeat"] == repeat].to_csv(index=False))
        _write_if_changed(sub / "folds.json", (work / "folds.json").read_text())
        for name in ("preprocessed", "cache"):
            _link(work / name, sub / name)
        out.append(sub)
    return out


def shuffled_folders(work: Path) -> list[Path]:
    """The per-repeat folders of the shuffled run, in repeat order."""
    return sorted((work / "shuffled").glob("r*/"), key=lambda p: int(p.name[1:]))


def run_positive_control(cfg: PositiveControlConfig, data_dir: str | Path, work_dir: str | Path, n_jobs: int = 2,
                         progress: bool = False) -> Path:
    """Generate (or reuse) the positive-control cohort and train (or reuse) its models; return its work folder.

    Parameters
    ----------
    cfg : PositiveControlConfig
    data_dir : path
        Where the cohort is generated (:data:`DATA_DIR` under the repository root in the book).
    work_dir : path
        ``WORK``; the stage writes only under :func:`work_folder`.
    n_jobs : int
        Worker processes for generation, preprocessing and folds.
    """
    import yaml


    data_dir = Path(data_dir)
    work = work_folder(work_dir, cfg.profile)
    stamp = work / "config.yaml"
    wanted = yaml.safe_dump(cfg.identity(), sort_keys=True)
    if stamp.is_file() and stamp.read_text() != wanted:
        shutil.rmtree(work)  # made with other settings: this folder belongs to the stage alone
    generate_cohort(cfg.synth_config(), data_dir, progress=progress, n_jobs=n_jobs, overwrite=True)
    build_cohort(CohortConfig(), data_dir, work)
    run_preprocessing(PreprocessConfig(), work / "cohort" / "cohort.csv", data_dir / "imaging", work,
                      progress=progress, n_jobs=n_jobs)
    store.write_text(stamp, wanted)
    train_cfg, cv = cfg.train_config(), cfg.cv_config()
    tasks, n_done = crossval.plan_grid(MODELS, work, cv, train_cfg, n_jobs)
    for sub in _prepare_shuffled(work, cfg.seed):
        more, done = crossval.plan_grid([SHUFFLED_MODEL], sub, cv, train_cfg, n_jobs)
        tasks, n_done = tasks + more, n_done + done
    crossval.run_tasks(tasks, n_jobs, progress=progress, n_done=n_done)  # one pool for every run
    stored.collect_results(work)
    return work


@dataclasses.dataclass(frozen=True)
class PositiveControlResult:
    """What the positive control stored, and its verdict.

    Attributes
    ----------
    config : dict
        The stage's settings (``config.yaml``).
    predictions : DataFrame
        Test-fold predictions of :data:`MODELS` and of the shuffled run (named :data:`SHUFFLED_NAME`).
    results : ModelResults
        Per-fold metrics and mean +- SE over repeats of every run.
    ceilings : ModelResults or None
        Truth-based ceilings on the same folds (:func:`prrt_utils.analysis.metrics.truth_ceilings`).
    histories : DataFrame
        Loss per epoch of the CNN folds (true and shuffled labels).
    train_loss : DataFrame
        Per CNN fold: ``model, repeat, fold, best_epoch, train_loss_kept`` (training loss of the epoch
        whose weights were kept; with the warm start kept, its first epoch's), ``train_loss_last``.
    checks : DataFrame
        ``check, threshold, value, passed``: the issue's criteria, measured.
    full_size : bool
        Whether the run has the size the thresholds are stated for.
    """

    config: dict[str, Any]
    predictions: pd.DataFrame
    results: Any
    ceilings: Any
    histories: pd.DataFrame
    train_loss: pd.DataFrame
    checks: pd.DataFrame
    full_size: bool

    @property
    def passed(self) -> bool:
        return bool(self.checks["passed"].all())

    def per_repeat(self) -> pd.DataFrame:
        """AUROC per repeat (mean over its folds), one row per run and one column per repeat, and mean +- SE."""
        rows = []
        for model in self.results.models:
            s = self.results.get(model, "auroc")
            rows.append({"model": model, **{f"repeat {i}": v for i, v in enumerate(s.per_repeat)},
                         "mean ± SE": s.format(2)})
        return pd.DataFrame(rows)

    def verdict(self) -> str:
        """One sentence: passed or failed, and whether the thresholds apply at this size."""
        failed = self.checks.loc[~self.checks["passed"], "check"].tolist()
        size = (f"{self.config['n_patients']} patients, {self.config['n_repeats']} x {self.config['n_splits']} "
                f"cross-validation, training profile {self.config['profile']!r}"
                + (f", {self.config['epochs']} epochs" if self.config.get("epochs") else ""))
        if not self.full_size:
            return (f"NOT JUDGED: this run is smaller than the issue's positive control ({size}; the thresholds are "
                    f"stated for {FULL_SIZE['n_patients']} patients, {FULL_SIZE['n_repeats']} x "
                    f"{FULL_SIZE['n_splits']} cross-validation and the full recipe), so its numbers are shown but "
                    f"not held to them; {'every check would pass' if not failed else 'checks not met: ' + '; '.join(failed)}.")
        if not failed:
            return f"PASSED: the pipeline learns what the PET images decide, and nothing when the outcome is shuffled ({size})."
        return f"FAILED: {'; '.join(failed)} ({size}).{self._shuffled_reading()} A pipeline that fails its positive control is broken."

    def _shuffled_reading(self) -> str:
        """What a shuffled-label AUROC outside the tolerance means, by its direction."""
        shuf = self.results.get(SHUFFLED_NAME, "auroc").mean
        if shuf > 0.5 + THRESHOLDS["shuffled_tolerance"]:
            return (" The network scores above chance on labels that nothing in its input predicts: look for a "
                    "leak of the outcome into the inputs or the splits.")
        if shuf < 0.5 - THRESHOLDS["shuffled_tolerance"]:
            return (" Below chance on permuted labels is not a leak (a leak scores above 0.5): it is the known "
                    "negative bias of cross-validation on labels unrelated to the inputs, with chance variation "
                    "of the permutations, larger than the issue's tolerance here.")
        return ""


def _train_loss(histories_dir: Path, model: str, name: str) -> pd.DataFrame:
    import json

    rows = []
    for path in sorted((histories_dir / "results" / model).glob("r*_f*/history.json")):
        if not (path.parent / "done.json").is_file():
            continue
        h = json.loads(path.read_text())
        losses = h.get("train_loss") or []
        if not losses:
            continue
        best = int(h.get("best_epoch", len(losses)))
        r, f = path.parent.name[1:].split("_f")
        rows.append({"model": name, "repeat": int(r), "fold": int(f), "best_epoch": best,
                     "train_loss_kept": float(losses[max(best, 1) - 1]), "train_loss_last": float(losses[-1])})
    return pd.DataFrame(rows, columns=["model", "repeat", "fold", "best_epoch", "train_loss_kept", "train_loss_last"])


def read_positive_control(data_dir: str | Path, work_dir: str | Path, profile: str = "default") -> PositiveControlResult:
    """Read the stored positive control (:func:`run_positive_control`) and judge it against :data:`THRESHOLDS`.

    Never trains. Raises :class:`PositiveControlError` when the stage has not run to the end.
    """
    import yaml


    data_dir, work = Path(data_dir), work_folder(work_dir, profile)
    if not (work / "config.yaml").is_file():
        raise PositiveControlError(f"{work / 'config.yaml'} not found: the positive-control stage has not run")
    config = yaml.safe_load((work / "config.yaml").read_text())
    try:
        pred = stored.read_results(work, list(MODELS))
        subs = shuffled_folders(work)
        if not subs:
            raise GridError(f"no shuffled run in {work / 'shuffled'}")
        shuffled = pd.concat([stored.read_results(sub, [SHUFFLED_MODEL]) for sub in subs],
                             ignore_index=True).assign(model=SHUFFLED_NAME)
    except GridError as exc:
        raise PositiveControlError(f"the positive control is incomplete: {exc}") from None
    predictions = pd.concat([pred, shuffled], ignore_index=True)
    results = metrics.evaluate(predictions, order=[*MODELS, SHUFFLED_NAME])
    truth = metrics.read_truth(data_dir)
    ceilings = None
    if truth is not None and (data_dir / "clinical.csv").is_file():
        clinical = pd.read_csv(data_dir / "clinical.csv", dtype={"patient_id": str})
        ceilings = metrics.truth_ceilings(pred, truth, clinical)
    histories = pd.concat([stored.load_histories(work, [SHUFFLED_MODEL]),
                           *(stored.load_histories(sub, [SHUFFLED_MODEL]).assign(model=SHUFFLED_NAME) for sub in subs)],
                          ignore_index=True)
    train_loss = pd.concat([_train_loss(work, SHUFFLED_MODEL, SHUFFLED_MODEL),
                            *(_train_loss(sub, SHUFFLED_MODEL, SHUFFLED_NAME) for sub in subs)], ignore_index=True)
    checks = _checks(results, train_loss)
    identity = PositiveControlConfig(**{k: config[k] for k in config if k in PositiveControlConfig.__dataclass_fields__})
    return PositiveControlResult(config, predictions, results, ceilings, histories, train_loss, checks,
                                 identity.full_size)


def _checks(results: Any, train_loss: pd.DataFrame) -> pd.DataFrame:
    t = THRESHOLDS
    pet, shuf = results.get(SHUFFLED_MODEL, "auroc"), results.get(SHUFFLED_NAME, "auroc")
    loss = train_loss.loc[train_loss["model"] == SHUFFLED_MODEL, "train_loss_kept"]
    mean_loss = float(loss.mean()) if len(loss) else math.nan
    worst = min(pet.per_repeat) if pet.per_repeat else math.nan
    rows = [
        ("PET-only CNN: mean CV AUROC", f">= {t['mean_auroc']:.2f}", pet.mean, pet.mean >= t["mean_auroc"]),
        ("PET-only CNN: lowest repeat's AUROC", f">= {t['repeat_auroc']:.2f}", worst, worst >= t["repeat_auroc"]),
        ("PET-only CNN: training loss (mean over folds, epoch kept)", f"< {t['train_loss']:.2f}", mean_loss,
         mean_loss < t["train_loss"]),
        ("PET-only CNN, shuffled labels: mean CV AUROC", f"0.50 ± {t['shuffled_tolerance']:.2f}", shuf.mean,
         abs(shuf.mean - 0.5) <= t["shuffled_tolerance"]),
    ]
    return pd.DataFrame([{"check": c, "threshold": th, "value": round(float(v), 3), "passed": bool(ok)}
                         for c, th, v, ok in rows])


# --------------------------------------------------------------------------- the positive-control page

CEILING_NAMES = {"ceiling_labs": "ceiling: labs (true values)", "ceiling_image": "ceiling: image (true values)",
                 "ceiling_labs_image": "ceiling: labs + image (true values)", "bayes_ceiling": "Bayes ceiling"}
"""Display names of the truth-based ceilings on the positive-control page."""


def display_names(names: dict[str, str]) -> dict[str, str]:
    """``names`` with the shuffled run named in words."""
    return {**names, SHUFFLED_NAME: "PET only, shuffled labels"}


@dataclasses.dataclass(frozen=True)
class PositiveControlPage:
    """What the positive-control page shows, or why it has nothing (the book ran on an own cohort).

    Attributes
    ----------
    result : PositiveControlResult or None
        ``None`` when the control was not run in this book.
    data_dir : str
        The control cohort's folder ("" when not run).
    profile : str
        The training profile of the stored folds.
    names : dict
        Display names (:func:`display_names`).
    """

    result: PositiveControlResult | None
    data_dir: str
    profile: str
    names: dict[str, str]

    def _name(self, model: str) -> str:
        return self.names.get(model, model)

    def intro(self) -> Any:
        """Which cohort and cross-validation the control ran on, or why it did not run (Markdown)."""
        from IPython.display import Markdown

        if self.result is None:
            return Markdown(
                "**The positive control was not run in this book.** It is run only when the book is made on the "
                "synthetic cohort: the control tests the pipeline, not a centre's data, so it does not depend on "
                "which patients a book shows. Run `make book` once on the synthetic cohort (or `prrt book` without "
                "`--cohort`) to see it.")
        c = self.result.config
        return (f"Training profile: {self.profile!r}. Cohort: {self.data_dir} ({c['n_patients']} patients, seed "
                f"{c['seed']}); cross-validation {c['n_repeats']} x {c['n_splits']}.")

    def verdict(self) -> tuple[Any, ...]:
        """The verdict in words and the measured checks."""
        from IPython.display import Markdown

        return () if self.result is None else (Markdown(f"**{self.result.verdict()}**"), self.result.checks)

    def per_repeat(self) -> tuple[Any, ...]:
        """AUROC per repeat of every run, models named in words."""
        if self.result is None:
            return ()
        return (self.result.per_repeat().assign(model=lambda t: t["model"].map(self._name)),)

    def ceilings(self) -> tuple[Any, ...]:
        """Each true-label model against the ceiling of what it sees, and the ceilings; or why there are none."""

        r = self.result
        if r is None:
            return ()
        if r.ceilings is None:
            return (f"No ground truth in {self.data_dir}: no ceiling to show.",)
        models = [m for m in r.results.models if m != SHUFFLED_NAME]
        table = metrics.versus_ceiling(metrics.evaluate(r.predictions[r.predictions["model"].isin(models)],
                                                        order=models), r.ceilings)
        return table.assign(model=table["model"].map(self._name)), r.ceilings.table(names=CEILING_NAMES)

    def metrics_figure(self) -> Any:
        """Every run's metrics beside the ceilings (plotly), or ``None``."""

        return None if self.result is None else metrics.metrics_figure(self.result.results, self.result.ceilings,
                                                                       names=self.names)

    def losses(self) -> tuple[Any, ...]:
        """The loss curves and, per model, the mean kept epoch and training losses."""

        r = self.result
        if r is None:
            return ()
        kept = (r.train_loss.groupby("model", sort=False)[["best_epoch", "train_loss_kept", "train_loss_last"]]
                .mean().round(3).rename(index=self._name))
        return metrics.loss_figure(r.histories, names=self.names), kept

    def shuffled(self) -> tuple[Any, ...]:
        """AUROC per fold of the shuffled-label run."""
        if self.result is None:
            return ()
        fm = self.result.results.fold_metrics
        return (fm[fm["model"] == SHUFFLED_NAME][["repeat", "fold", "auroc", "prob_sd"]].reset_index(drop=True),)


def positive_control_page(data_dir: str | Path, work_dir: str | Path, profile: str = "default",
                          names: dict[str, str] | None = None) -> PositiveControlPage:
    """:func:`read_positive_control` for the page; an empty page when ``data_dir`` is empty (not run in this book)."""
    names = display_names(names or {})
    result = read_positive_control(data_dir, work_dir, profile) if str(data_dir) else None
    return PositiveControlPage(result=result, data_dir=str(data_dir), profile=profile, names=names)
