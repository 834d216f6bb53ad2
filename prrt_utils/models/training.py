"""Training of one model on one cross-validation fold, and the fold's files (paper 2.5-2.6).

Everything learned from data is learned on the training part of the fold only:
the laboratory scaling (:class:`LabScaler`), the image intensity normalisation
(:class:`FoldNormaliser`), the network or forest, and, with early stopping, the
stopping epoch (on a validation split carved out of the training part). The
test part is touched once, to predict.

Two recipes (:class:`TrainConfig`). The default is one that learns (issue 14):
AdamW at learning rate 0.01 with weight decay 0.01, at most 60 epochs with
early stopping on a stratified validation split carved out of the training
part (the stopping epoch is chosen there, never on the test part), random
shifts of the volumes (no left-right flip: where an organ sits is
information), and PET divided by each patient's liver reference with the
physiological organs masked (:mod:`prrt_utils.data.anatomy`). Every one of those
settings was fixed before the twin's results were looked at, on the positive
control (a separate cohort whose outcome the images determine), and is stated
on the book's training page. ``TrainConfig.paper()`` is the paper's literal
recipe (section 2.5: Adam, learning rate 0.01, weight decay 0.2, dropout 0.1,
binary cross-entropy; the paper gives no number of epochs: 8), kept as a named
profile; on the earlier twin it shrank the networks to a nearly constant output.

Determinism: every fold seeds Python, NumPy and torch from a seed derived from
(global seed, repeat, fold, model name) (:func:`fold_seed`) and runs with
``torch.use_deterministic_algorithms(True)``; on CPU with the same number of
threads two runs give identical predictions. The number of intra-op threads
can change the order of floating-point sums, so it is recorded in
``done.json``.

Files of one fold, ``WORK/results/<model>/r<repeat>_f<fold>/`` (DESIGN
"Folds and results"): ``predictions.parquet``, ``embeddings.npz``,
``inner_predictions.parquet`` (:data:`INNER_PREDICTION_COLUMNS`: predictions of
patients of the TRAINING part that no test patient influenced, for recalibration
inside the fold, :func:`prrt_utils.analysis.calibration.recalibrate_within_folds`),
``weights.pt`` (Random Forest: ``weights.joblib``), ``normalisation.json``,
``history.json`` and, written last, ``done.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedShuffleSplit

from prrt_utils.data.folds import fold_ids
from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config
from prrt_utils.models.inputs import CohortData, FoldNormaliser, LabScaler, TrainingError, model_inputs
from prrt_utils.models.networks import (
    FusionNet,
    ModelSpec,
    build_network,
    make_forest,
    make_logistic,
)
from prrt_utils.models.stored import INNER_FILE, INNER_PREDICTION_COLUMNS, fold_dir, read_done

__all__ = [
    "RECIPE_SOURCES",
    "FoldOutput",
    "TrainConfig",
    "recipe_table",
    "fold_seed",
    "fold_status",
    "resolve_device",
    "run_fold",
    "seed_everything",
    "train_fold",
]


INNER_CV_SPLITS = 3
"""Folds of the inner cross-validation that gives tabular models' inner predictions (fixed a priori)."""


PROFILES = ("default", "paper")
"""Named training recipes (:meth:`TrainConfig.profile`)."""

PAPER_RECIPE: dict[str, Any] = {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.2, "epochs": 8,
                                "early_stopping": False, "augment": False, "pet_reference": "none"}
"""The settings in which the ``paper`` profile differs from the default (section 2.5; 8 epochs: the
paper gives no number)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """How every CNN is trained (paper 2.5) and how its inputs are normalised.

    Attributes
    ----------
    optimizer : {"adamw", "adam"}
        ``"adamw"``: ``torch.optim.AdamW``, weight decay decoupled from the
        gradient. ``"adam"``: ``torch.optim.Adam``, whose weight decay is an L2
        penalty (the paper's literal "Adam, weight decay 0.2"; with decay 0.2
        the penalty dominates Adam's normalised step and the networks shrink
        to a constant output).
    lr, weight_decay : float
        0.01 and 0.01 by default (chosen on the positive control, a separate
        cohort, never on the twin's folds: at 0.001 the PET-only network had
        not converged after 60 epochs there, mean AUROC 0.77 vs 0.82 at
        0.01, 2 repeats, before the organ margin); the paper's 0.01 and 0.2 (as an L2 penalty) in :meth:`paper`.
    dropout : float
        Dropout probability of models whose spec leaves ``dropout_prob`` empty, 0.1 (paper).
    loss : {"bce"}
        Binary cross-entropy on the logit of short PFS (paper).
    epochs : int
        Maximum passes over the training part; with early stopping the best
        epoch on the inner validation split is kept. The paper gives no number.
    batch_size : int
        Patients per step. A last batch of one is merged into the one before
        (batch norm cannot train on one sample).
    early_stopping : bool
        Hold out ``val_fraction`` of the training part (stratified), stop when
        its loss has not improved for ``patience`` epochs and keep the best
        epoch's weights. The number of epochs is thereby chosen inside the
        training part of every fold.
    val_fraction, patience
        See ``early_stopping``.
    device : str
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.
    seed : int
        Global seed; each fold derives its own with :func:`fold_seed`.
    pet_reference : {"liver", "none"}
        ``"liver"``: PET divided by the patient's median liver SUV, spleen,
        kidneys and bladder set to 0 (:func:`prrt_utils.data.anatomy.pet_relative`),
        when the cohort has organ masks (CT label maps); without them the fold
        falls back to ``"none"`` and ``normalisation.json`` says so.
        ``"none"``: SUVbw as it is.
    pet_clip_suv : float
        PET is clipped to ``[0, pet_clip_suv]`` (SUV, or multiples of the liver
        reference with ``pet_reference="liver"``) before ``log1p``.
    ct_window_hu : (float, float)
        CT is clipped to this HU window before standardisation.
    augment : bool
        Random integer shift (up to ``max_shift_voxels`` per axis, wrapping
        around) of each training patient's volumes, the same for PET and CT,
        drawn from the fold's seed; ``flip`` adds a left-right flip.
    max_shift_voxels : int
        See ``augment``.
    flip : bool
        Left-right flip in augmentation. Off: organs are not symmetric (liver
        right, spleen left), so a flipped patient is not a plausible patient.
    profile_name : {"default", "paper"}
        Which named recipe these settings come from (:meth:`profile`); recorded in
        ``train.yaml`` and every fold's ``done.json`` and part of the cache key, so
        folds trained with one profile are never reused for another.
    """

    optimizer: str = "adamw"
    lr: float = 0.01
    weight_decay: float = 0.01
    dropout: float = 0.1
    loss: str = "bce"
    epochs: int = 60
    batch_size: int = 16
    early_stopping: bool = True
    val_fraction: float = 0.2
    patience: int = 15
    device: str = "auto"
    seed: int = SEED
    pet_reference: str = "liver"
    pet_clip_suv: float = 100.0
    ct_window_hu: tuple[float, float] = (-1000.0, 1000.0)
    augment: bool = True
    max_shift_voxels: int = 2
    flip: bool = False
    profile_name: str = "default"

    @classmethod
    def paper(cls, **overrides: Any) -> TrainConfig:
        """The paper's literal recipe (section 2.5): Adam, lr 0.01, L2 decay 0.2, 8 epochs, raw SUV, no augmentation."""
        return cls(**{**PAPER_RECIPE, "profile_name": "paper", **overrides})

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named recipe: ``"default"`` (one that learns) or ``"paper"`` (:meth:`paper`); ``profile_name`` records it."""
        if name not in PROFILES:
            raise TrainingError(f"unknown training profile {name!r}; known: {', '.join(PROFILES)}")
        return cls.paper(**overrides) if name == "paper" else cls(**{"profile_name": name, **overrides})

    def hash(self) -> str:
        """The cache key of the folds: every setting, and the profile unless it is the default.

        The default profile leaves the key as it was before profiles were recorded, so folds
        trained with the default recipe stay valid; any other profile changes it.
        """
        if self.profile_name != "default":
            return super().hash()
        import hashlib

        blob = {k: v for k, v in self.to_dict().items() if k != "profile_name"}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def __post_init__(self) -> None:
        if self.profile_name not in PROFILES:
            raise TrainingError(f"unknown training profile {self.profile_name!r}; known: {', '.join(PROFILES)}")
        if self.optimizer not in ("adam", "adamw"):
            raise TrainingError(f"optimizer must be 'adamw' (decoupled decay) or 'adam' (L2 penalty), got {self.optimizer!r}")
        if self.pet_reference not in ("liver", "none"):
            raise TrainingError(f"pet_reference must be 'liver' or 'none', got {self.pet_reference!r}")
        if self.max_shift_voxels < 0:
            raise TrainingError(f"max_shift_voxels must be >= 0, got {self.max_shift_voxels}")
        if self.loss != "bce":
            raise TrainingError(f"loss must be 'bce' (the paper's), got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainingError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if not 0.0 < self.val_fraction < 0.5:
            raise TrainingError(f"val_fraction must lie in (0, 0.5), got {self.val_fraction}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise TrainingError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {self.device!r}")
        lo, hi = self.ct_window_hu
        if not lo < hi:
            raise TrainingError(f"ct_window_hu must be (low, high) with low < high, got {self.ct_window_hu}")


# --------------------------------------------------------------------------- seeds, device


RECIPE_SOURCES: dict[str, tuple[str, str]] = {
    "optimizer": ("a priori", "AdamW; the paper's Adam with an L2 penalty of 0.2 shrank the networks to a constant "
                  "output on an earlier version of the synthetic cohort"),
    "lr": ("positive control", "the paper's 0.01, kept after a comparison with 0.001 on the positive-control cohort "
           "(a separate synthetic population), never on this cohort's folds"),
    "weight_decay": ("a priori", "decoupled decay of 0.01 (the paper's 0.2 acted as an L2 penalty)"),
    "dropout": ("paper", "section 2.5"),
    "loss": ("paper", "binary cross-entropy, section 2.5"),
    "epochs": ("inner selection", "the most epochs a fold may run; which epoch's weights are kept is chosen "
               "inside the training part (early_stopping)"),
    "batch_size": ("a priori", "the paper gives none"),
    "early_stopping": ("inner selection", "grid: every epoch from 0 (the warm start) to epochs; kept: the lowest "
                       "loss on a stratified val_fraction of the fold's training part; no test patient is seen"),
    "val_fraction": ("a priori", "share of the training part held out for the epoch choice"),
    "patience": ("a priori", "epochs without improvement before stopping"),
    "device": ("run setting", "where it runs; no effect on the result on CPU"),
    "seed": ("run setting", "fixes every split and every initial weight"),
    "pet_reference": ("a priori", "PET divided by the median liver SUV, spleen, kidneys and bladder set to 0, as a "
                      "nuclear-medicine reader judges uptake"),
    "pet_clip_suv": ("a priori", "upper clip of SUV before referencing"),
    "ct_window_hu": ("a priori", "CT window in Hounsfield units"),
    "augment": ("a priori", "random shifts of the training volumes"),
    "max_shift_voxels": ("a priori", "largest random shift"),
    "flip": ("a priori", "off: organ position is information (the liver is on one side)"),
    "profile_name": ("run setting", "the named recipe these settings come from: 'default' (one that learns) or "
                     "'paper' (the paper's literal recipe, section 2.5; prrt run/book --profile)"),
}
"""Where each :class:`TrainConfig` setting comes from: ``paper``, ``a priori`` (fixed before any
result), ``positive control`` (compared on the separate positive-control cohort only), ``inner
selection`` (chosen inside every fold's training part; the reason gives the grid) or ``run
setting``. Nothing was chosen by looking at the test folds of a cohort the book reports."""

RECIPE_SOURCE_KINDS = ("paper", "a priori", "positive control", "inner selection", "run setting")


def recipe_table(cfg: TrainConfig) -> pd.DataFrame:
    """Every setting of ``cfg`` with its value in this run and where it comes from (:data:`RECIPE_SOURCES`).

    Returns
    -------
    DataFrame
        ``setting, value, source, why``, in the order of the dataclass fields.
    """
    rows = []
    for f in dataclasses.fields(cfg):
        source, why = RECIPE_SOURCES[f.name]
        if cfg.profile_name == "paper" and f.name in PAPER_RECIPE and getattr(cfg, f.name) == PAPER_RECIPE[f.name]:
            source, why = "paper", "the paper's literal recipe (profile 'paper'; section 2.5, epochs: the paper gives none)"
        rows.append({"setting": f.name, "value": str(getattr(cfg, f.name)), "source": source, "why": why})
    return pd.DataFrame(rows)


def fold_seed(seed: int, repeat: int, fold: int, model: str) -> int:
    """Seed of one (repeat, fold, model), derived with :class:`numpy.random.SeedSequence`.

    Different models get different but fixed seeds on the same fold; the value
    does not depend on the order in which folds are run.
    """
    ss = np.random.SeedSequence([int(seed), int(repeat), int(fold), zlib.crc32(model.encode())])
    return int(ss.generate_state(1, dtype=np.uint32)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block (warn-only on CUDA), then restore."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- fold-fitted normalisation


# --------------------------------------------------------------------------- one fold


@dataclasses.dataclass(frozen=True)
class FoldOutput:
    """Everything one fold produces (before it is written to disk).

    Attributes
    ----------
    predictions : DataFrame
        :data:`PREDICTION_COLUMNS`, one row per test patient.
    embeddings : dict
        ``patient_id`` (N,), ``embedding`` (N, E) (the head's input; for the
        forest the standardised log-labs), ``split`` (N,) ``train|val|test``.
    model : FusionNet or RandomForestClassifier
    normalisation : dict
        ``{"labs": LabScaler.to_dict(), "images": FoldNormaliser.to_dict()}``.
    history : dict
        ``epoch``, ``train_loss`` (and ``val_loss``) per epoch, ``best_epoch``, ``stopped_early``.
    info : dict
        Seed, device, threads, sizes, seconds.
    inner_predictions : DataFrame
        :data:`INNER_PREDICTION_COLUMNS`, one row per training patient that has an
        inner prediction (:func:`inner_predictions`); empty for a network trained
        without a validation split (the paper profile).
    """

    predictions: pd.DataFrame
    embeddings: dict[str, np.ndarray]
    model: Any
    normalisation: dict[str, Any]
    history: dict[str, Any]
    info: dict[str, Any]
    inner_predictions: pd.DataFrame = dataclasses.field(
        default_factory=lambda: pd.DataFrame(columns=list(INNER_PREDICTION_COLUMNS)))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def _augment(xs: list[torch.Tensor], image: Sequence[bool], generator: torch.Generator,
             max_shift: int, flip_lr: bool = False) -> list[torch.Tensor]:
    """Random integer shift (and, with ``flip_lr``, left-right flip) per patient, the same for PET and CT of a patient."""
    n = len(xs[0])
    flip = (torch.rand(n, generator=generator) < 0.5) & flip_lr
    shift = torch.randint(-max_shift, max_shift + 1, (n, 3), generator=generator) if max_shift > 0 else torch.zeros(n, 3, dtype=torch.long)
    out = []
    for x, is_image in zip(xs, image, strict=True):
        if not is_image:
            out.append(x)
            continue
        parts = []
        for i in range(n):
            v = x[i]
            if flip[i]:
                v = torch.flip(v, dims=(-1,))
            if max_shift > 0:
                v = torch.roll(v, shifts=tuple(int(t) for t in shift[i]), dims=(-3, -2, -1))
            parts.append(v)
        out.append(torch.stack(parts))
    return out


def _predict(net: FusionNet, xs: Sequence[torch.Tensor], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    probs, embs = [], []
    with torch.no_grad():
        for start in range(0, len(xs[0]), batch_size):
            part = [x[start : start + batch_size] for x in xs]
            emb = net.embed(*part)
            probs.append(torch.sigmoid(net.head(emb).squeeze(1)).cpu())
            embs.append(emb.cpu())
    return torch.cat(probs).double().numpy(), torch.cat(embs).float().numpy()


def _warm_start_lab_path(net: FusionNet, labs: np.ndarray, y: np.ndarray) -> None:
    """Start the fusion head at the logistic regression of the labs, fitted on the same training patients.

    The direct lab path gets the regression's coefficients and the MLP's output
    layer its intercept with zero weights, so the network starts as the labs'
    logistic regression and training adds what the image contributes (issue 14).
    Fitted on the fold's fit part only (scikit-learn, L2, C = 1).
    """
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(labs, dtype=float), y)
    with torch.no_grad():
        net.head.labs.weight.copy_(torch.as_tensor(lr.coef_, dtype=net.head.labs.weight.dtype))
        last = net.head.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(float(lr.intercept_[0]))


def _train_net(spec: ModelSpec, cfg: TrainConfig, fit_x: list[np.ndarray], fit_y: np.ndarray,
               val_x: list[np.ndarray] | None, val_y: np.ndarray | None, img_size: Sequence[int],
               n_labs: int, device: torch.device, seed: int) -> tuple[FusionNet, dict[str, Any]]:
    net = build_network(spec, n_labs=n_labs, img_size=img_size, dropout_prob=cfg.dropout).to(device)
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = optimizer(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xs = [torch.from_numpy(x).to(device) for x in fit_x]
    y = torch.from_numpy(fit_y.astype(np.float32)).to(device)
    vxs = [torch.from_numpy(x).to(device) for x in val_x] if val_x is not None else None
    vy = torch.from_numpy(val_y.astype(np.float32)).to(device) if val_y is not None else None
    gen = torch.Generator().manual_seed(seed)
    is_image = [name != "labs" for name in spec.ordered_inputs]
    history: dict[str, Any] = {"epoch": [], "train_loss": []}
    if vxs is not None:
        history["val_loss"] = []
    if spec.uses_labs and getattr(net.head, "labs", None) is not None:
        _warm_start_lab_path(net, fit_x[spec.ordered_inputs.index("labs")], fit_y)
    best, best_state, since_best = float("inf"), None, 0
    if vxs is not None:  # the warm start itself is a candidate: fusion never ends worse on the val split
        net.eval()
        with torch.no_grad():
            best = float(loss_fn(torch.cat([net(*[x[i : i + 32] for x in vxs]) for i in range(0, len(vy), 32)]), vy))
        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        history["val_loss_start"] = best
        history["best_epoch"] = 0
    for epoch in range(cfg.epochs):
        net.train()
        total = 0.0
        for idx in _batches(len(y), cfg.batch_size, gen):
            idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            batch = [x[idx] for x in xs]
            if cfg.augment:
                batch = _augment(batch, is_image, gen, cfg.max_shift_voxels, cfg.flip)
            loss = loss_fn(net(*batch), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(total / len(y))
        if vxs is not None:
            net.eval()
            with torch.no_grad():
                vloss = float(loss_fn(torch.cat([net(*[x[i : i + 32] for x in vxs]) for i in range(0, len(vy), 32)]), vy))
            history["val_loss"].append(vloss)
            if vloss < best - 1e-6:
                best, since_best = vloss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                history["best_epoch"] = epoch + 1
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    break
    history["stopped_early"] = vxs is not None and len(history["epoch"]) < cfg.epochs
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        history["best_epoch"] = len(history["epoch"])
    return net, history


def train_fold(spec: ModelSpec, cfg: TrainConfig, data: CohortData, train_ids: Sequence[str],
               test_ids: Sequence[str], repeat: int = 0, fold: int = 0) -> FoldOutput:
    """Fit one model on a fold's training part and predict its test part (paper 2.5-2.6).

    Parameters
    ----------
    spec : ModelSpec
    cfg : TrainConfig
    data : CohortData
        Inputs of at least ``train_ids + test_ids``.
    train_ids, test_ids : sequence of str
        Disjoint patient ids; the test ids are used for prediction only.
    repeat, fold : int
        Fold identity (seeds and the output table).

    Returns
    -------
    FoldOutput
    """
    overlap = sorted(set(train_ids) & set(test_ids))
    if overlap:
        raise TrainingError(f"repeat {repeat}, fold {fold}: patient {overlap[0]} is in both train and test")
    t0 = time.perf_counter()
    seed = fold_seed(cfg.seed, repeat, fold, spec.name)
    seed_everything(seed)
    train_rows, test_rows = data.rows(train_ids), data.rows(test_ids)
    y_train = data.y[train_rows]
    if len(np.unique(y_train)) < 2:
        raise TrainingError(f"repeat {repeat}, fold {fold}: the training part holds one class only")

    fit_rows, val_rows = train_rows, np.array([], dtype=int)
    if cfg.early_stopping and spec.kind == "cnn":
        sss = StratifiedShuffleSplit(n_splits=1, test_size=cfg.val_fraction, random_state=seed % (2**32))
        fit_i, val_i = next(sss.split(np.zeros(len(train_rows)), y_train))
        fit_rows, val_rows = train_rows[np.sort(fit_i)], train_rows[np.sort(val_i)]

    lab_scaler = LabScaler(data.lab_columns).fit(data.labs[fit_rows])
    modalities = spec.image_inputs if spec.kind == "cnn" else ()
    for m in modalities:
        if m not in data.volumes:
            raise TrainingError(f"model {spec.name!r} needs {m} volumes, which were not loaded")
    # the liver reference needs organ masks; a cohort without CT label maps falls back to raw SUV (recorded)
    reference = cfg.pet_reference if "organs" in data.volumes else "none"
    normaliser = FoldNormaliser(cfg.pet_clip_suv, cfg.ct_window_hu, reference)
    normaliser.fit({m: data.clipped(m, normaliser)[fit_rows] for m in modalities}, clipped=True)
    device = resolve_device(cfg.device) if spec.kind == "cnn" else torch.device("cpu")
    history: dict[str, Any] = {}
    emb_rows = np.concatenate([fit_rows, val_rows, test_rows])
    split = np.array(["train"] * len(fit_rows) + ["val"] * len(val_rows) + ["test"] * len(test_rows))

    if spec.kind in ("random_forest", "logistic"):
        model = make_forest(spec, seed) if spec.kind == "random_forest" else make_logistic(spec)
        fit_features = data.features(spec, fit_rows, lab_scaler)
        model.fit(fit_features, data.y[fit_rows])
        emb = data.features(spec, emb_rows, lab_scaler)
        prob = model.predict_proba(emb)[:, 1].astype(float)
        inner_rows, inner_prob, inner_source = fit_rows, _inner_cv(model, fit_features, data.y[fit_rows], seed), "inner_cv"
    else:
        img_size = next(iter(data.volumes[m] for m in modalities)).shape[2:]
        with deterministic(device):
            fit_x = model_inputs(spec, data, fit_rows, normaliser, lab_scaler)
            val_x = model_inputs(spec, data, val_rows, normaliser, lab_scaler) if len(val_rows) else None
            model, history = _train_net(
                spec, cfg, fit_x, data.y[fit_rows], val_x, data.y[val_rows] if len(val_rows) else None,
                img_size, len(data.lab_columns), device, seed,
            )
            all_x = [torch.from_numpy(x).to(device) for x in model_inputs(spec, data, emb_rows, normaliser, lab_scaler)]
            prob, emb = _predict(model, all_x)
        model = model.cpu()
        # the validation split's predictions: training patients the network was not fitted on
        inner_rows, inner_prob, inner_source = val_rows, prob[len(fit_rows):len(fit_rows) + len(val_rows)], "validation"
    n_test = len(test_rows)
    predictions = pd.DataFrame(
        {
            "model": spec.name,
            "repeat": int(repeat),
            "fold": int(fold),
            "patient_id": [data.patient_ids[i] for i in test_rows],
            "y_true": data.y[test_rows].astype(int),
            "prob": prob[len(prob) - n_test:],  # (an empty test part: none)
        }
    )
    embeddings = {
        "patient_id": np.array([data.patient_ids[i] for i in emb_rows]),
        "embedding": np.asarray(emb, dtype=np.float32),
        "split": split,
    }
    info = {
        "seed": seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "n_train": int(len(fit_rows)),
        "n_val": int(len(val_rows)),
        "n_test": int(n_test),
        "seconds": round(time.perf_counter() - t0, 3),
        "ct_init": str(spec.ct_init) if spec.ct_init is not None else None,
        "ct_init_note": spec.ct_init_note,
        "ct_load": report.to_dict() if (report := getattr(model, "ct_load_report", None)) is not None else None,
    }
    normalisation = {"labs": lab_scaler.to_dict(), "images": normaliser.to_dict()}
    if len(inner_prob) == 0:  # no inner prediction possible (no validation split, or a class too small)
        inner_rows = inner_rows[:0]
    inner = pd.DataFrame(
        {
            "model": spec.name,
            "repeat": int(repeat),
            "fold": int(fold),
            "patient_id": [data.patient_ids[i] for i in inner_rows],
            "y_true": data.y[inner_rows].astype(int),
            "prob": np.asarray(inner_prob, dtype=float),
            "source": inner_source,
        },
        columns=list(INNER_PREDICTION_COLUMNS),
    )
    return FoldOutput(predictions, embeddings, model, normalisation, history, info, inner)


def _inner_cv(model: Any, features: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of ``model`` refitted by stratified k-fold CV inside the training part.

    ``k`` = :data:`INNER_CV_SPLITS` (fewer when a class has fewer patients); an
    empty array when a class has fewer than 2 patients (no inner prediction is
    possible). Deterministic: the folds and the refitted models are seeded from
    the fold's seed.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    k = min(INNER_CV_SPLITS, int(np.bincount(np.asarray(y, dtype=int), minlength=2).min()))
    if k < 2:
        return np.array([], dtype=float)
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % (2**32))
    return cross_val_predict(clone(model), features, y, cv=cv, method="predict_proba")[:, 1].astype(float)


# --------------------------------------------------------------------------- files of one fold


def _fold_identity(spec: ModelSpec, cfg: TrainConfig, folds_sha256: str) -> dict[str, Any]:
    ct_sha = store.sha256_file(spec.ct_init) if spec.ct_init is not None and Path(spec.ct_init).is_file() else None
    return {
        "model_hash": spec.hash(),
        "train_hash": cfg.hash(),
        "folds_sha256": folds_sha256,
        "ct_init_sha256": ct_sha,
    }


def _write_fold(out: Path, spec: ModelSpec, result: FoldOutput, identity: Mapping[str, Any]) -> None:
    store.write_parquet(out / "predictions.parquet", result.predictions)
    store.write_parquet(out / INNER_FILE, result.inner_predictions)
    with store.atomic_path(out / "embeddings.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **result.embeddings)
    if spec.kind != "cnn":
        import joblib

        weights = out / "weights.joblib"
        with store.atomic_path(weights) as tmp:
            joblib.dump(result.model, tmp)
    else:
        weights = out / "weights.pt"
        buf = io.BytesIO()
        torch.save(result.model.state_dict(), buf)
        store.write_bytes(weights, buf.getvalue())
    store.write_json(out / "normalisation.json", result.normalisation)
    store.write_json(out / "history.json", result.history)
    from sklearn.metrics import roc_auc_score

    p = result.predictions
    auroc = float(roc_auc_score(p["y_true"], p["prob"])) if p["y_true"].nunique() == 2 else None
    done = {
        **identity,
        **result.info,
        "model": spec.name,
        "weights": weights.name,
        "test_auroc": auroc,
        "torch_version": torch.__version__,
    }
    store.write_json(out / "done.json", done)  # last: the fold counts as finished only now


def fold_status(spec: ModelSpec, cfg: TrainConfig, work_dir: str | Path, repeat: int, fold: int,
                folds_sha256: str = "") -> tuple[str, list[str]]:
    """``("done", [])``, ``("todo", [])`` or ``("stale", [differing keys])`` for one fold's folder.

    A fold is stale when its ``done.json`` was written for another model or
    training configuration, other splits or another CT checkpoint. A fold
    finished before folds wrote ``inner_predictions.parquet`` (issue 15) counts
    as not done: it is trained again (deterministically, so its test predictions
    do not change) to gain the inner predictions recalibration needs.
    """
    out = fold_dir(work_dir, spec.name, repeat, fold)
    done = read_done(out)
    if done is None:
        return "todo", []
    identity = _fold_identity(spec, cfg, folds_sha256)
    differs = [k for k, v in identity.items() if done.get(k) != v]
    if differs:
        return "stale", differs
    return ("done", []) if (out / INNER_FILE).is_file() else ("todo", [])


def run_fold(spec: ModelSpec, cfg: TrainConfig, data: CohortData, folds: pd.DataFrame, repeat: int, fold: int,
             work_dir: str | Path, folds_sha256: str = "", force: bool = False) -> str:
    """Train and write one fold unless its ``done.json`` already exists for the same inputs.

    Returns
    -------
    str
        ``"trained"`` or ``"skipped"``.

    Raises
    ------
    TrainingError
        The fold is done but for another model/training configuration, folds or
        CT checkpoint, and ``force`` is false (results are never mixed silently).
    """

    out = fold_dir(work_dir, spec.name, repeat, fold)
    status, differs = fold_status(spec, cfg, work_dir, repeat, fold, folds_sha256)
    if status == "done":
        return "skipped"
    if status == "stale" and not force:
        raise TrainingError(
            f"{out} was finished with a different {', '.join(differs)}; delete {out.parent} (or pass "
            "force=True) to retrain this model with the new settings"
        )
    if out.exists():
        shutil.rmtree(out)  # unfinished or forced: start the fold afresh
    train_ids, test_ids = fold_ids(folds, repeat, fold)
    result = train_fold(spec, cfg, data, train_ids, test_ids, repeat, fold)
    _write_fold(out, spec, result, _fold_identity(spec, cfg, folds_sha256))
    return "trained"


# --------------------------------------------------------------------------- reading a fold back


# --------------------------------------------------------------------------- toy inputs for tests and benchmarks


