"""Chapter 06: explain the stored models (paper 2.7, 3.4); reads stored results, never trains.

Downstream of the grid: everything here READS ``WORK/results`` (embeddings,
weights, predictions, ``done.json``) and ``WORK/preprocessed``; it computes and
caches what chapter 06 shows. The figures and the page's sections are in
:mod:`prrt_utils.analysis.explain_figures`, the statistics of the saliency maps in
:mod:`prrt_utils.analysis.saliency_stats`, the model names and families in
:mod:`prrt_utils.analysis.families`.

Paper sections implemented
--------------------------
* 2.7, 3.4 and Figure 6: UMAP of the embeddings of each image and fusion model
  (:meth:`Explainer.umap`).
* 2.7, 3.4 and Figure 7: permutation importance of each laboratory value, single and
  grouped (AST with ALT), for the Random Forest and every fusion model
  (:meth:`Explainer.permutation_importance`), and the gradient of the output
  with respect to the laboratory inputs of the fusion layer
  (:meth:`Explainer.lab_gradients`).
* 2.7, 3.4, Figures 8-9: PET saliency maps (gradients of the prediction with
  respect to the PET input), the distribution of normalised gradient magnitudes
  (:meth:`Explainer.gradient_distributions`) and, on the synthetic cohort, the
  share of saliency on lesions vs physiological uptake (:meth:`Explainer.saliency_mass`).

Libraries: captum (``Saliency``: gradients of the output with respect to the
inputs), umap-learn (``UMAP``), scikit-learn (``roc_auc_score``,
``silhouette_score``), nibabel for the ground-truth label maps and
:func:`prrt_utils.data.grid.resample` to put them on the model's grid with the
geometry the preprocessing used. Written by hand (reasons at each place): the
batched permutation loop (it replays scikit-learn's permutations exactly and a
test proves equality), the region grouping of the label maps and the cache.

Caching
-------
Expensive products (UMAP, permutation importance, gradients, saliency
statistics, label maps) are written atomically to ``WORK/explain/`` (or a
``cache_dir`` of the caller's choice), keyed by the SHA-256 of the
``done.json`` of every fold used, the :class:`ExplainConfig` and the call's
arguments: a retrained fold or a changed setting gives a new file, never a
stale result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from prrt_utils.analysis.families import fusion_models
from prrt_utils.analysis.saliency_stats import REGIONS, region_codes, region_fractions, saliency_mass_fraction
from prrt_utils.data.grid import TargetGrid, resample
from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config
from prrt_utils.io.nifti import load_label_map as read_label_map
from prrt_utils.models.inputs import cohort_data
from prrt_utils.models.networks import IMG_SIZE, get_spec
from prrt_utils.models.stored import fold_dir, load_embeddings, load_fold

__all__ = [
    "DEFAULT_GROUPS",
    "IMAGE_FEATURE",
    "LAB_NAMES",
    "ExplainConfig",
    "ExplainError",
    "Explainer",
    "group_vs_singles",
    "importance_summary",
    "lab_gradient_summary",
    "load_label_map",
    "normalised_magnitude",
    "permutation_drops",
    "pet_saliency",
]

EXPLAIN_VERSION = 1
"""Bump when a cached product of the same inputs would change."""

LAB_NAMES: dict[str, str] = {"ast_u_l": "AST", "alt_u_l": "ALT", "cga_ug_l": "CgA", "ggt_u_l": "gamma-GT"}
"""Display names of the laboratory inputs (:data:`prrt_utils.models.networks.LAB_COLUMNS`)."""

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {"AST+ALT": ("ast_u_l", "alt_u_l")}
"""Laboratory values permuted together: AST and ALT are correlated liver enzymes."""

IMAGE_FEATURE = "image embedding"
"""Name of the group of all image features of a fusion model in the permutation importance."""


class ExplainError(ValueError):
    """Missing results, a patient not in the folds, or stored outputs that do not reproduce."""


# --------------------------------------------------------------------------- configuration and cache


@dataclasses.dataclass(frozen=True)
class ExplainConfig(Config):
    """Settings of the explainability chapter (paper 3.4).

    Attributes
    ----------
    repeat : int
        Repeat whose three test sets give the saliency maps, the gradient
        distributions and the saliency mass (each patient once, always scored by
        a model that did not train on them).
    umap_repeat, umap_fold : int
        Fold whose embeddings (training and test patients of ONE network) are
        projected by UMAP.
    umap_neighbors : int
        UMAP ``n_neighbors`` (lowered to ``n - 1`` for tiny inputs).
    umap_min_dist : float
        UMAP ``min_dist``.
    n_permutations : int
        Permutations per feature and fold (scikit-learn's ``n_repeats``).
    seed : int
        Seed of UMAP, of the permutations and of the subsample of gradients.
    max_values : int
        Gradient magnitudes per model entering the sample-based distances
        (a seeded uniform draw with replacement when there are more; histograms use all).
    bins : int
        Histogram bins on [0, 1] for the gradient distributions.
    vmin : float
        Normalised gradients below this are not drawn on the overlays (paper Fig. 9: 0.3).
    """

    repeat: int = 0
    umap_repeat: int = 0
    umap_fold: int = 0
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    n_permutations: int = 10
    seed: int = SEED
    max_values: int = 1_000_000
    bins: int = 100
    vmin: float = 0.3


def _done_text(work_dir: Path, model: str, repeat: int, fold: int) -> str:
    path = fold_dir(work_dir, model, repeat, fold) / "done.json"
    if not path.is_file():
        raise ExplainError(f"{path.parent} is not finished (no done.json): run the grid for {model} first")
    return path.read_text()


class _Cache:
    """Atomic files under ``root`` keyed by a SHA-256 of what they were computed from (hand-written: a few lines)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _path(self, name: str, key: str, ext: str) -> Path | None:
        return None if self.root is None else self.root / f"{name}-{key[:16]}.{ext}"

    def frame(self, name: str, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        path = self._path(name, key, "parquet")
        if path is not None and path.is_file():
            return pd.read_parquet(path)
        out = compute()
        if path is not None:
            store.write_parquet(path, out)
        return out

    def arrays(self, name: str, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        path = self._path(name, key, "npz")
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        out = compute()
        if path is not None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **out)
            store.write_bytes(path, buf.getvalue())
        return out


# --------------------------------------------------------------------------- permutation importance


def permutation_drops(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    features: Mapping[str, Sequence[int]],
    n_repeats: int = 10,
    random_state: int = SEED,
) -> tuple[float, dict[str, np.ndarray]]:
    """Drop in AUROC when a feature, or a group of features, is permuted across patients.

    Same definition and the same permutations as
    :func:`sklearn.inspection.permutation_importance` with
    ``scoring="roc_auc"`` (for single columns the numbers are identical; a test
    checks it), written by hand for two reasons: a GROUP of columns (AST with
    ALT) must be shuffled with one row permutation, which scikit-learn cannot
    do; and scikit-learn calls the model once per permutation, while here all
    permuted copies of all features go through the model in ONE call (a
    500-tree Random Forest costs 55-250 ms per call almost whatever the number
    of rows, so the chapter's ~1000 calls would take minutes).

    Parameters
    ----------
    predict_proba : callable
        ``(n, p) -> (n,)`` probability of the positive class (short PFS).
    X : ndarray, shape (n, p)
        Inputs of the held-out patients.
    y : ndarray, shape (n,)
        Labels 0/1; both classes must be present.
    features : mapping name -> column indices
        One entry per feature or group; a group's columns share each permutation.
    n_repeats : int
        Permutations per feature.
    random_state : int
        Seed; as in scikit-learn, every feature sees the same sequence of permutations.

    Returns
    -------
    baseline : float
        AUROC of the unpermuted data (0.5 = chance).
    drops : dict name -> ndarray, shape (n_repeats,)
        ``baseline - AUROC(permuted)``; 0 = the model does not use the feature,
        positive = it relies on it, negative = permuting helped (noise).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y).astype(int)
    n = len(y)
    if len(np.unique(y)) < 2:
        raise ExplainError("permutation importance needs both classes among the held-out patients")
    seed = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max + 1)
    blocks = [X[None]]
    for cols in features.values():
        cols = list(cols)
        rs = np.random.RandomState(seed)  # as scikit-learn: the same permutations for every feature
        shuffling, rows = np.arange(n), np.arange(n)
        stacked = np.repeat(X[None], n_repeats, axis=0)
        for k in range(n_repeats):
            rs.shuffle(shuffling)
            rows = rows[shuffling]  # scikit-learn re-shuffles the already permuted column: compose the same way
            stacked[k][:, cols] = X[rows][:, cols]
        blocks.append(stacked)
    everything = np.concatenate(blocks)  # (1 + F * R, n, p): one call of the model for all of it
    prob = np.asarray(predict_proba(everything.reshape(-1, X.shape[1])), dtype=float).reshape(len(everything), n)
    baseline = float(roc_auc_score(y, prob[0]))
    drops = {}
    for i, name in enumerate(features):
        part = prob[1 + i * n_repeats : 1 + (i + 1) * n_repeats]
        drops[name] = np.array([baseline - roc_auc_score(y, part[k]) for k in range(n_repeats)])
    return baseline, drops


def importance_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean drop in AUROC per model and feature, with its spreads.

    Returns
    -------
    DataFrame
        ``model, feature, kind, mean_drop, sd_permutations, se_folds, n_folds``:
        ``sd_permutations`` is the standard deviation over the permutations
        within a fold, averaged over folds (how much one permutation moves the
        number); ``se_folds`` the standard error over folds of the per-fold mean
        drop (how much it depends on the training set).
    """
    per_fold = tidy.groupby(["model", "feature", "kind", "repeat", "fold"], sort=False)["drop"].agg(["mean", "std"])
    g = per_fold.groupby(level=["model", "feature", "kind"], sort=False)
    out = pd.DataFrame({
        "mean_drop": g["mean"].mean(),
        "sd_permutations": g["std"].mean(),
        "se_folds": g["mean"].std(ddof=1) / np.sqrt(g["mean"].count()),
        "n_folds": g["mean"].count(),
    }).reset_index()
    return out


def group_vs_singles(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]] = DEFAULT_GROUPS) -> pd.DataFrame:
    """Drop of each group beside the drops of its members and their sum.

    ``group - sum of singles > 0``: the members stand in for each other
    (correlated), so permuting one alone understates what they carry together.
    """
    rows = []
    names = {k: LAB_NAMES.get(k, k) for g in groups.values() for k in g}
    for model, s in summary.groupby("model", sort=False):
        drop = dict(zip(s["feature"], s["mean_drop"], strict=True))
        for group, members in groups.items():
            if group not in drop:
                continue
            singles = [drop.get(names[m], math.nan) for m in members]
            row = {"model": model, "group": group}
            row.update({f"drop {names[m]}": v for m, v in zip(members, singles, strict=True)})
            row["sum of singles"] = float(np.sum(singles))
            row["drop of group"] = drop[group]
            row["group - sum"] = drop[group] - float(np.sum(singles))
            rows.append(row)
    return pd.DataFrame(rows)


def lab_gradient_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per model and lab: mean |d logit / d lab| and mean signed gradient over all held-out patients.

    Units: change of the logit of short PFS per standard deviation of the
    (log-transformed) laboratory value; positive = a higher value pushes
    towards short PFS.
    """
    g = tidy.groupby(["model", "feature"], sort=False)["gradient"]
    return pd.DataFrame({"mean_abs_gradient": g.apply(lambda v: float(np.abs(v).mean())),
                         "mean_gradient": g.mean(), "n": g.count()}).reset_index()


# --------------------------------------------------------------------------- saliency


def pet_saliency(model: torch.nn.Module, inputs: Sequence[torch.Tensor], index: int = 0,
                 batch_size: int = 8) -> np.ndarray:
    """Gradient of the model output with respect to one input, per voxel (captum ``Saliency``).

    Parameters
    ----------
    model : torch.nn.Module
        Returns one logit per patient ``(B,)`` (:class:`prrt_utils.models.networks.FusionNet`), in eval mode.
    inputs : sequence of tensors
        The model's inputs in :data:`~prrt_utils.models.networks.INPUT_ORDER`, e.g. PET
        ``(B, 1, D, H, W)`` and labs ``(B, L)``, normalised as in training.
    index : int
        Which input to attribute (0 = PET for every PET model).
    batch_size : int
        Patients per backward pass (memory).

    Returns
    -------
    ndarray, shape (B, D, H, W), float32
        Signed ``d logit / d input`` (captum ``abs=False``). The gradient of the
        probability differs by the factor ``p (1 - p)`` per patient, which the
        per-patient normalisation of :func:`normalised_magnitude` removes.
    """
    from captum.attr import Saliency  # lazy: captum is only needed to compute saliency, not to read its cache

    model = model.eval()
    sal = Saliency(model)
    out = []
    n = int(inputs[0].shape[0])
    for start in range(0, n, batch_size):
        part = tuple(x[start : start + batch_size].detach().clone().float().requires_grad_(True) for x in inputs)
        attr = sal.attribute(part, abs=False)
        a = attr[index] if isinstance(attr, tuple) else attr
        out.append(a.detach().cpu().numpy().astype(np.float32))
    arr = np.concatenate(out)
    return arr[:, 0] if arr.ndim == 5 else arr


def normalised_magnitude(saliency: np.ndarray) -> np.ndarray:
    """``|g| / max |g|`` per patient: magnitudes in [0, 1] (paper Fig. 8 works on this scale)."""
    mag = np.abs(saliency).astype(np.float32)
    peak = mag.reshape(len(mag), -1).max(axis=1).reshape(-1, *([1] * (mag.ndim - 1)))
    return np.divide(mag, peak, out=np.zeros_like(mag), where=peak > 0)


# --------------------------------------------------------------------------- ground-truth labels (synthetic cohort)


def load_label_map(data_dir: str | Path, patient_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Ground-truth label map of one synthetic patient on its ORIGINAL PET grid.

    Returns
    -------
    labels : ndarray of int, canonical ``(D, H, W)`` (:func:`prrt_utils.io.nifti.load_label_map`)
    affine : ndarray (4, 4)
        Voxel index -> LPS mm.
    names : dict code -> name (``labels.json``)
    """
    gt = Path(data_dir) / "ground_truth"
    path = store.child(gt / "labels", f"{patient_id}.nii.gz")
    if not path.is_file():
        raise ExplainError(f"{path} not found: no ground-truth labels for {patient_id} (only the synthetic cohort has them)")
    names = {int(k): v for k, v in json.loads((gt / "labels.json").read_text()).items()}
    labels, lps = read_label_map(path, patient_id)
    return labels, lps, names


# --------------------------------------------------------------------------- the chapter's computations


class Explainer:
    """Explanations of the stored models of one work directory (paper 3.4); reads, never trains.

    Parameters
    ----------
    work_dir : path
        ``WORK`` with ``folds.csv``, ``cohort/cohort.csv`` and ``results/``.
    data_dir : path, optional
        ``DATA``; its ``ground_truth/`` (synthetic cohort only) gives the label maps.
    config : ExplainConfig, optional
    cache_dir : path, optional
        Where cached products go; default ``WORK/explain``. ``False`` disables caching.
    data : CohortData, optional
        Model inputs; by default read lazily with :func:`cohort_data` when a
        computation needs images.
    """

    def __init__(self, work_dir: str | Path, data_dir: str | Path | None = None, config: ExplainConfig | None = None,
                 cache_dir: str | Path | bool | None = None, data: Any = None) -> None:
        self.work_dir = Path(work_dir)
        self.data_dir = Path(data_dir) if data_dir else None
        self.config = config or ExplainConfig()
        if cache_dir is False:
            root = None
        else:
            root = Path(cache_dir) if cache_dir else self.work_dir / "explain"
        self.cache = _Cache(root)
        self._data = data
        self._memo: dict[tuple[Any, ...], np.ndarray] = {}
        self.folds = pd.read_csv(self.work_dir / "folds.csv", dtype={"patient_id": str})
        self.pairs = sorted(set(zip(self.folds["repeat"].astype(int), self.folds["fold"].astype(int), strict=True)))

    # ---------------------------------------------------------------- helpers

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = cohort_data(self.work_dir)
        return self._data

    def _key(self, product: str, models: Sequence[str], pairs: Sequence[tuple[int, int]], images: bool = False,
             **extra: Any) -> str:
        """SHA-256 of the product, config, arguments and the ``done.json`` of every fold used.

        ``images``: the product also reads the preprocessed volumes, so the
        preprocessing index (one SHA-256 per volume file) enters the key too.
        """
        h = hashlib.sha256()
        h.update(json.dumps({"product": product, "version": EXPLAIN_VERSION, "config": self.config.to_dict(),
                             "models": list(models), "extra": extra}, sort_keys=True, default=str).encode())
        for m in models:
            for r, f in pairs:
                h.update(_done_text(self.work_dir, m, r, f).encode())
        index = self.work_dir / "preprocessed" / "index.csv"
        if images and index.is_file():
            h.update(index.read_bytes())
        return h.hexdigest()

    def test_fold_of(self, patient_id: str, repeat: int | None = None) -> int:
        """The fold of ``repeat`` in which ``patient_id`` is a test patient."""
        repeat = self.config.repeat if repeat is None else repeat
        f = self.folds
        hit = f[(f["repeat"] == repeat) & (f["patient_id"] == patient_id) & (f["split"] == "test")]
        if hit.empty:
            raise ExplainError(f"patient {patient_id} is not a test patient of repeat {repeat} in folds.csv")
        return int(hit["fold"].iloc[0])

    def _img_size(self) -> tuple[int, ...]:
        if self._data is not None and self._data.volumes:
            return tuple(next(iter(self._data.volumes.values())).shape[2:])
        return IMG_SIZE

    def _load(self, model: str, repeat: int, fold: int) -> Any:
        return load_fold(self.work_dir, get_spec(model), repeat, fold, img_size=self._img_size())

    def _embeddings(self, model: str, repeat: int, fold: int) -> tuple[pd.DataFrame, np.ndarray]:
        frame = load_embeddings(self.work_dir, model, repeat, fold)
        cols = [c for c in frame.columns if c.startswith("e") and c[1:].isdigit()]
        return frame[["patient_id", "split"]], frame[cols].to_numpy(dtype=np.float32)

    def _labels_of(self, ids: Sequence[str]) -> np.ndarray:
        data = self._data
        if data is not None:
            return data.y[data.rows(ids)]
        y = pd.read_csv(self.work_dir / "cohort" / "cohort.csv", dtype={"patient_id": str}).set_index("patient_id")
        return y.loc[list(ids), "pfs_short"].to_numpy(dtype=int)

    # ---------------------------------------------------------------- UMAP (Figure 6)

    def umap(self, models: Sequence[str]) -> pd.DataFrame:
        """2-D UMAP of the embeddings of one fold per model (training and test patients of one network).

        The embeddings are the fusion layer's input (image features, then the
        standardised labs for fusion models), stored by the grid. All patients of
        ONE fold are projected together because they share one network; test
        sets of different folds come from three networks whose feature axes do
        not correspond, so they cannot share a map.

        Returns
        -------
        DataFrame
            ``model, patient_id, split, y_true, umap_1, umap_2, silhouette``;
            ``silhouette`` (scikit-learn, on the standardised embedding, by
            class; -1 to 1, 0 = classes not separated) is one number per model.
        """
        cfg = self.config
        pair = [(cfg.umap_repeat, cfg.umap_fold)]

        def compute() -> pd.DataFrame:
            import umap as umap_  # lazy: umap-learn (numba) takes seconds to import and only this product needs it

            parts = []
            for m in models:
                meta, emb = self._embeddings(m, cfg.umap_repeat, cfg.umap_fold)
                z = StandardScaler().fit_transform(emb)
                n = len(z)
                reducer = umap_.UMAP(n_neighbors=max(2, min(cfg.umap_neighbors, n - 1)), min_dist=cfg.umap_min_dist,
                                     random_state=cfg.seed, n_jobs=1, init="spectral" if n > 10 else "random")
                with warnings.catch_warnings():  # a seed makes UMAP single-threaded; it says so on every call
                    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
                    xy = reducer.fit_transform(z)
                y = self._labels_of(meta["patient_id"].tolist())
                sil = float(silhouette_score(z, y)) if len(np.unique(y)) == 2 else math.nan
                parts.append(meta.assign(model=m, y_true=y, umap_1=xy[:, 0], umap_2=xy[:, 1], silhouette=sil))
            out = pd.concat(parts, ignore_index=True)
            return out[["model", "patient_id", "split", "y_true", "umap_1", "umap_2", "silhouette"]]

        return self.cache.frame("umap", self._key("umap", models, pair), compute)

    # ---------------------------------------------------------------- permutation importance (Figure 7)

    def _held_out(self, model: str, repeat: int, fold: int) -> dict[str, Any]:
        """A fold's test patients as the fusion layer sees them, and a predictor from that layer on.

        Returns ``ids``, ``x`` (stored embeddings ``(n, E)``), ``y``, ``predict``
        (``(n, E) -> (n,)`` probability of short PFS: the forest, or the CNN's
        head), ``head`` (CNN only), ``labs`` (lab column names) and ``offset``
        (index of the first lab column in ``x``: image features come first).
        """
        spec = get_spec(model)
        meta, emb = self._embeddings(model, repeat, fold)
        test = (meta["split"] == "test").to_numpy()
        ids = meta.loc[test, "patient_id"].tolist()
        x = emb[test]
        loaded = self._load(model, repeat, fold)
        labs = list(loaded.lab_scaler.columns) if spec.uses_labs else []
        head = None
        if spec.kind != "cnn":  # forest or logistic: the embedding is its input (radiomics first, labs last)
            forest, offset = loaded.model, emb.shape[1] - len(labs)

            def predict(v: np.ndarray) -> np.ndarray:
                return forest.predict_proba(v)[:, 1]
        else:
            head, offset = loaded.model.head.eval(), loaded.model.embedding_dim - len(labs)

            def predict(v: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    t = torch.from_numpy(np.asarray(v, dtype=np.float32))
                    return torch.sigmoid(head(t).squeeze(1)).double().numpy()
        stored = pd.read_parquet(fold_dir(self.work_dir, model, repeat, fold) / "predictions.parquet")
        stored = stored.set_index("patient_id").loc[ids]
        gap = float(np.max(np.abs(predict(x) - stored["prob"].to_numpy()))) if len(ids) else 0.0
        if gap > 1e-4:
            raise ExplainError(
                f"{model} r{repeat} f{fold}: the stored embeddings do not reproduce the stored predictions "
                f"(largest difference {gap:.2g}); the fold's files are inconsistent, retrain it"
            )
        return {"ids": ids, "x": x, "y": stored["y_true"].to_numpy(dtype=int), "predict": predict, "head": head,
                "labs": labs, "offset": offset}

    def permutation_importance(self, models: Sequence[str], groups: Mapping[str, Sequence[str]] = DEFAULT_GROUPS,
                               pairs: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
        """Drop in AUROC when each laboratory value (or group) is permuted among held-out patients.

        For every fold, the test patients' stored fusion-layer inputs (image
        features and standardised labs, ``embeddings.npz``) go through the
        fold's head (CNN) or forest (Random Forest); a lab column is permuted
        across patients while each patient's image features stay in place, which
        is exactly permuting that lab value at the model's input, without
        recomputing the CNN. For fusion models the whole image-feature block is
        also permuted as one group (:data:`IMAGE_FEATURE`): how much the model
        relies on the image at all. Before use, the head must reproduce the
        stored predictions (else :class:`ExplainError`).

        Parameters
        ----------
        models : sequence of str
            The Random Forest and/or fusion models (models without labs are skipped).
        groups : mapping name -> lab columns
            Permuted together with one row permutation (default AST with ALT).
        pairs : sequence of (repeat, fold), optional
            Default: every fold of ``folds.csv``.

        Returns
        -------
        DataFrame
            ``model, repeat, fold, feature, kind (single|group), permutation,
            baseline_auroc, drop`` (tidy; :func:`importance_summary` aggregates).
        """
        pairs = list(pairs) if pairs is not None else self.pairs
        models = [m for m in models if get_spec(m).uses_labs]
        cfg = self.config

        def compute() -> pd.DataFrame:
            rows = []
            for m in models:
                for r, f in pairs:
                    h = self._held_out(m, r, f)
                    labs, offset = h["labs"], h["offset"]
                    features: dict[str, list[int]] = {LAB_NAMES.get(c, c): [offset + i] for i, c in enumerate(labs)}
                    kinds = dict.fromkeys(features, "single")
                    for g, members in groups.items():
                        if all(c in labs for c in members):
                            features[g] = [offset + labs.index(c) for c in members]
                            kinds[g] = "group"
                    if offset > 0:
                        features[IMAGE_FEATURE] = list(range(offset))
                        kinds[IMAGE_FEATURE] = "group"
                    base, drops = permutation_drops(h["predict"], h["x"], h["y"], features, cfg.n_permutations, cfg.seed)
                    for name, d in drops.items():
                        for k, v in enumerate(d):
                            rows.append({"model": m, "repeat": r, "fold": f, "feature": name, "kind": kinds[name],
                                         "permutation": k, "baseline_auroc": base, "drop": float(v)})
            return pd.DataFrame(rows)

        key = self._key("permutation", models, pairs, groups={k: list(v) for k, v in groups.items()})
        return self.cache.frame("permutation", key, compute)

    def lab_gradients(self, models: Sequence[str], pairs: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
        """Gradient of the output logit with respect to each lab input of the fusion layer (paper 2.7).

        captum ``Saliency`` on the fusion head, the patient's image features
        held fixed; one value per held-out patient, fold, model and lab.

        Returns
        -------
        DataFrame
            ``model, repeat, fold, patient_id, feature, gradient`` (logit per SD
            of the log-lab; :func:`lab_gradient_summary` aggregates).
        """
        from captum.attr import Saliency  # lazy: see pet_saliency

        pairs = list(pairs) if pairs is not None else self.pairs
        models = fusion_models(models)

        def compute() -> pd.DataFrame:
            rows = []
            for m in models:
                for r, f in pairs:
                    h = self._held_out(m, r, f)
                    ids, x, labs, offset, head = h["ids"], h["x"], h["labs"], h["offset"], h["head"]
                    image = torch.from_numpy(x[:, :offset])

                    def forward(lab: torch.Tensor, img: torch.Tensor, head: torch.nn.Module = head) -> torch.Tensor:
                        return head(torch.cat([img, lab], dim=1)).squeeze(1)

                    lab = torch.from_numpy(np.ascontiguousarray(x[:, offset:])).requires_grad_(True)
                    grad = Saliency(forward).attribute(lab, additional_forward_args=(image,), abs=False)
                    g = grad.detach().numpy()
                    for j, c in enumerate(labs):
                        rows.extend({"model": m, "repeat": r, "fold": f, "patient_id": pid,
                                     "feature": LAB_NAMES.get(c, c), "gradient": float(g[i, j])}
                                    for i, pid in enumerate(ids))
            return pd.DataFrame(rows)

        return self.cache.frame("lab_gradients", self._key("lab_gradients", models, pairs), compute)

    # ---------------------------------------------------------------- PET saliency (Figures 8-9)

    def saliency(self, model: str, patient_ids: Sequence[str], repeat: int | None = None) -> np.ndarray:
        """PET saliency of ``patient_ids``, each from the fold of ``repeat`` where the patient was held out.

        Returns
        -------
        ndarray, shape (N, D, H, W), float32
            Signed gradients ``d logit / d PET`` (PET as the network sees it: log1p
            SUV, standardised), see :func:`pet_saliency`.
        """
        repeat = self.config.repeat if repeat is None else repeat
        spec = get_spec(model)
        if "pet" not in spec.image_inputs:
            raise ExplainError(f"model {model!r} has no PET input")
        memo_key = (model, repeat, tuple(patient_ids))
        if memo_key in self._memo:  # whole-repeat maps are used twice (distributions, saliency mass)
            return self._memo[memo_key]
        data = self.data
        out: dict[str, np.ndarray] = {}
        by_fold: dict[int, list[str]] = {}
        for pid in patient_ids:
            by_fold.setdefault(self.test_fold_of(pid, repeat), []).append(pid)
        for fold, ids in sorted(by_fold.items()):
            loaded = self._load(model, repeat, fold)
            sal = pet_saliency(loaded.model, loaded.inputs(data, ids), index=spec.ordered_inputs.index("pet"))
            out.update(zip(ids, sal, strict=True))
        result = np.stack([out[p] for p in patient_ids])
        if len(patient_ids) > 8:
            self._memo = {memo_key: result, **{k: v for k, v in self._memo.items() if k[0] != model}}
        return result

    def gradient_distributions(self, models: Sequence[str], repeat: int | None = None) -> dict[str, Any]:
        """Normalised PET gradient magnitudes of every test patient of one repeat, per model (paper Fig. 8).

        Each patient's ``|g|`` is divided by its maximum (values in [0, 1]);
        the histogram (``config.bins`` bins on [0, 1]) uses every voxel of every
        patient; the sample for the distances is a seeded uniform random draw
        (with replacement) of ``config.max_values`` voxels per model.

        Returns
        -------
        dict
            ``hist``: DataFrame ``model, bin_left, bin_right, count, density``;
            ``samples``: dict model -> ndarray of magnitudes; ``n_patients``: int.
        """
        repeat = self.config.repeat if repeat is None else repeat
        cfg = self.config
        pairs = [(repeat, f) for r, f in self.pairs if r == repeat]
        ids = sorted(self.folds.loc[self.folds["repeat"] == repeat, "patient_id"].unique())

        def compute() -> dict[str, np.ndarray]:
            edges = np.linspace(0.0, 1.0, cfg.bins + 1)
            out: dict[str, np.ndarray] = {"edges": edges}
            rng = np.random.default_rng(cfg.seed)
            for m in models:
                mag = normalised_magnitude(self.saliency(m, ids, repeat)).ravel()
                out[f"count::{m}"] = np.histogram(mag, bins=edges)[0]
                # uniform draw WITH replacement: as good for the distances and O(max_values), not O(all voxels)
                take = rng.integers(0, mag.size, cfg.max_values) if mag.size > cfg.max_values else slice(None)
                out[f"sample::{m}"] = mag[take].astype(np.float32)
            return out

        arr = self.cache.arrays("gradients", self._key("gradients", models, pairs, images=True), compute)
        edges = arr["edges"]
        rows = []
        for m in models:
            count = arr[f"count::{m}"]
            density = count / count.sum() / np.diff(edges)
            rows.append(pd.DataFrame({"model": m, "bin_left": edges[:-1], "bin_right": edges[1:], "count": count,
                                      "density": density}))
        return {"hist": pd.concat(rows, ignore_index=True), "samples": {m: arr[f"sample::{m}"] for m in models},
                "n_patients": len(ids)}

    def _labels_key(self, ids: Sequence[str]) -> str:
        """SHA-256 of the patients' label files and preprocessed volumes (what the label maps on the grid depend on)."""
        index = pd.read_csv(self.work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str},
                            keep_default_na=False).set_index("patient_id")
        h = hashlib.sha256(json.dumps({"ids": list(ids), "v": EXPLAIN_VERSION}).encode())
        for pid in ids:
            h.update(str(index.loc[pid, "sha256"]).encode())
            h.update(store.sha256_file(store.child(self.data_dir / "ground_truth" / "labels", f"{pid}.nii.gz")).encode())
        return h.hexdigest()

    def labels_on_grid(self, patient_ids: Sequence[str]) -> dict[str, Any]:
        """Ground-truth regions of ``patient_ids`` on each patient's model grid (synthetic cohort only).

        The label map (original PET grid) is resampled onto the grid stored with
        the patient's preprocessed volumes (``affine`` in ``WORK/preprocessed/<pid>.npz``)
        by fractional occupancy (:func:`prrt_utils.analysis.saliency_stats.region_fractions`); every voxel is then
        given the region occupying most of it (majority).

        Returns
        -------
        dict
            ``labels``: int8 ndarray ``(N, D, H, W)`` of region codes (index into
            :data:`prrt_utils.analysis.saliency_stats.REGIONS`); ``names``: dict code -> region; ``volumes``: DataFrame
            ``patient_id, region, volume_ml_fractional, volume_ml_majority``: each
            region's volume from the occupancy fractions (exact) and from the
            majority labels (what the saliency statistics use), so the cost of
            majority labelling for small lesions can be read off.
        """
        if self.data_dir is None:
            raise ExplainError("no data_dir: the ground-truth label maps are unknown")
        ids = list(patient_ids)
        index = pd.read_csv(self.work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str},
                            keep_default_na=False).set_index("patient_id")

        def compute() -> dict[str, np.ndarray]:
            out, frac_vox, major_vox, voxel_ml = [], [], [], []
            for pid in ids:
                labels, affine, names = load_label_map(self.data_dir, pid)
                with np.load(self.work_dir / "preprocessed" / index.loc[pid, "file"]) as z:
                    grid_affine, shape = z["affine"], z["pet"].shape
                fr = region_fractions(labels, affine, grid_affine, shape, region_codes(names))
                stack = np.stack([fr[n] for n in REGIONS])  # (R, D, H, W), only for this patient
                major = np.argmax(stack, axis=0).astype(np.int8)
                out.append(major)
                frac_vox.append(stack.reshape(len(REGIONS), -1).sum(axis=1))
                major_vox.append(np.bincount(major.ravel(), minlength=len(REGIONS)))
                voxel_ml.append(abs(np.linalg.det(np.asarray(grid_affine, dtype=float)[:3, :3])) / 1000.0)
            return {"labels": np.stack(out), "fractional_voxels": np.array(frac_vox),
                    "majority_voxels": np.array(major_vox), "voxel_ml": np.array(voxel_ml)}

        arr = self.cache.arrays("labels", self._labels_key(ids), compute)
        ml = arr["voxel_ml"][:, None]
        volumes = pd.DataFrame({
            "patient_id": np.repeat(ids, len(REGIONS)),
            "region": np.tile(REGIONS, len(ids)),
            "volume_ml_fractional": (arr["fractional_voxels"] * ml).ravel(),
            "volume_ml_majority": (arr["majority_voxels"] * ml).ravel(),
        })
        return {"labels": arr["labels"], "names": dict(enumerate(REGIONS)), "volumes": volumes}

    def saliency_mass(self, models: Sequence[str], repeat: int | None = None) -> pd.DataFrame:
        """Share of PET saliency on lesions, kidneys, spleen, bladder, liver, other body, outside (paper 3.4, 4).

        Every test patient of ``repeat``; each patient's ``|g|`` is scaled to
        sum 1 first so that every patient weighs the same, then
        :func:`prrt_utils.analysis.saliency_stats.saliency_mass_fraction` pools them.

        Returns
        -------
        DataFrame
            ``model, region, n_voxels, voxel_fraction, saliency_mass, mass_fraction, enrichment``.
        """
        repeat = self.config.repeat if repeat is None else repeat
        ids = sorted(self.folds.loc[self.folds["repeat"] == repeat, "patient_id"].unique())
        pairs = [(repeat, f) for r, f in self.pairs if r == repeat]

        def compute() -> pd.DataFrame:
            lab = self.labels_on_grid(ids)
            parts = []
            for m in models:
                mag = np.abs(self.saliency(m, ids, repeat))
                total = mag.reshape(len(mag), -1).sum(axis=1)
                # a network whose output does not depend on the PET of a patient (dead units, a constant
                # output) has no saliency to distribute: such patients are counted, not divided by zero
                keep = total > 0
                if not keep.any():
                    continue
                mag = mag[keep] / total[keep].reshape(-1, 1, 1, 1)
                parts.append(saliency_mass_fraction(mag, np.asarray(lab["labels"])[keep], lab["names"])
                             .assign(model=m, n_patients=int(keep.sum()), n_without_saliency=int((~keep).sum())))
            if not parts:
                raise ExplainError(f"no model of {list(models)} has any PET saliency in repeat {repeat}")
            out = pd.concat(parts, ignore_index=True)
            out = out[out["region"].isin(REGIONS)]  # stats adds "other" for unlisted codes: there are none
            return out[["model", *[c for c in out.columns if c != "model"]]].reset_index(drop=True)

        frame = self.cache.frame("saliency_mass", self._key("saliency_mass", models, pairs, images=True,
                                                                  labels=self._labels_key(ids)), compute)
        return frame.assign(region=pd.Categorical(frame["region"], categories=list(REGIONS), ordered=True))

    def pick_patients(self, predictions: pd.DataFrame, model: str, repeat: int | None = None) -> list[str]:
        """Two typical test patients of ``repeat``: the short-PFS and the long-PFS patient whose
        predicted probability (by ``model``) is the median of their class (typical, not best-case)."""
        repeat = self.config.repeat if repeat is None else repeat
        p = predictions[(predictions["model"] == model) & (predictions["repeat"] == repeat)].sort_values("patient_id")
        out = []
        for y in (1, 0):
            g = p[p["y_true"] == y]
            if g.empty:
                continue
            out.append(str(g.iloc[int(np.argmin((g["prob"] - g["prob"].median()).abs().to_numpy()))]["patient_id"]))
        return out

    def alignment_check(self, patient_id: str) -> float:
        """Pearson r between the preprocessed PET and the ground-truth SUV resampled like the labels.

        Close to 1 means the label maps land where the preprocessing put the
        PET (same geometry); a shift or flip would drop it sharply.
        """
        if self.data_dir is None:
            raise ExplainError("no data_dir: no ground truth to check against")
        index = pd.read_csv(self.work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str},
                            keep_default_na=False).set_index("patient_id")
        with np.load(self.work_dir / "preprocessed" / index.loc[patient_id, "file"]) as z:
            pet, grid_affine = z["pet"], z["affine"]
        img = nib.load(str(store.child(self.data_dir / "ground_truth" / "suv", f"{patient_id}.nii.gz")))
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(img.affine, dtype=float)
        suv = resample(np.asarray(img.get_fdata(dtype=np.float32)), lps, TargetGrid(grid_affine, pet.shape, "stored"))
        inside = pet > 0
        return float(np.corrcoef(pet[inside], suv[inside])[0, 1])
