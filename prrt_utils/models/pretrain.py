"""CT encoder pretraining on anatomy, without outcomes and without a model hub (paper 2.5, issue 6).

The paper's best model starts its CT branch from a pretrained MONAI CT
segmentation network and fine-tunes it. No machine here can download weights,
so :func:`pretrain_ct` trains the CT encoder of the seventh model itself on a
proxy task that needs no outcome: segmenting anatomy (body, lungs, liver,
spleen, kidneys, bladder, bone, lesions) on the preprocessed CT volumes,
supervised by label maps. The synthetic generator writes those maps
(``DATA/ground_truth/labels/<patient>.nii.gz``); on a real cohort they can be a
centre's own TotalSegmentator (or any) outputs as NIfTI, one per patient, with
``label_map`` saying which of their codes is which of our classes.

Never on the study's own patients (issue 15). A hub model is trained on other
people; pretraining on the study's label maps would show the encoder every test
patient's CT and, through the lesion class, its tumour burden (a transductive
leak). So the pretraining population is always a separate set
(:func:`pretraining_population`):

* synthetic cohort: an **independent synthetic population** written by the
  generator beside the cohort (``<DATA>-pretrain/``, :data:`POPULATION_SEED_OFFSET`
  added to the cohort's seed, ids ``ANAT-001`` ..., NIfTI, :data:`POPULATION_SIZE`
  patients by default), with all classes, lesions included (they are not study
  patients);
* own cohort: a separate set the centre gives (``population_dir``: a folder in
  the raw-export layout, ``imaging/<id>/`` and ``ct_labels/<id>.nii.gz`` with
  ``codes.json``, of patients outside the study). Without one, pretraining does
  not run and the book trains the branch from scratch and says so.

The population is preprocessed with the study's own preprocessing settings into
``WORK/pretrained/population/preprocessed/``; a pretraining patient id that is
also a study id stops the run. No outcome is read.

Network: the encoder is exactly the CT branch the seventh model builds
(:class:`~prrt_utils.models.networks.ConvEncoder` from its :class:`ModelSpec`), so
every one of its tensors loads by name. A light decoder (one 1x1x1 MONAI
convolution per encoder stage, upsampled trilinearly to the input size and
summed, FCN-style) turns each stage's features into class scores; it is thrown
away after pretraining. Written here because the decoder must hang off our own
encoder; MONAI's segmentation networks (UNet, SegResNet) bring their own
encoders, whose checkpoints route 2 (:func:`prrt_utils.models.networks.load_encoder_checkpoint`)
loads instead. Loss: MONAI :class:`~monai.losses.DiceCELoss`; held-out Dice
per class at full resolution: :func:`monai.metrics.compute_dice`.

Files (``WORK/pretrained/``): ``ct_encoder.pt`` (``{"state_dict": encoder
weights, "card": model card}``, written atomically), ``history.csv`` (loss per
epoch), ``dice.csv`` (held-out Dice per class, beside its ceiling: the Dice of
the true labels taken to the training resolution and back), ``split.csv`` (which patients
of the pretraining population trained and which were held out: ids only), ``skipped.csv``, ``config.yaml`` and, written last, ``card.json``
(the model card, with the cache key: SHA-256 of the configuration, every CT
volume and every label map used). A rerun with the same key reuses the
checkpoint instead of training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from prrt_utils import __version__
from prrt_utils.data.anatomy import (
    ANATOMY_CLASSES,
    SYNTHETIC_LABEL_MAP,
    AnatomyError,
    find_labels,
    label_lookup,
    label_map_path,
    labels_on_grid,
)
from prrt_utils.data.preprocess import PreprocessConfig, run_preprocessing
from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config
from prrt_utils.io.nifti import load_label_map
from prrt_utils.models.inputs import FoldNormaliser
from prrt_utils.models.networks import PRETRAIN_CT, ConvEncoder, ModelSpec, get_spec, load_encoder_checkpoint
from prrt_utils.models.training import deterministic, resolve_device, seed_everything
from prrt_utils.synthetic import SynthConfig, generate_cohort

__all__ = [
    "ANATOMY_CLASSES",
    "CHECKPOINT_NAME",
    "SYNTHETIC_LABEL_MAP",
    "AnatomySegNet",
    "coarse_labels",
    "find_labels",
    "PretrainConfig",
    "PretrainError",
    "PretrainPage",
    "PretrainResult",
    "card_markdown",
    "dice_verdict",
    "loss_figure",
    "pretrain_page",
    "checkpoint_path",
    "labels_on_grid",
    "POPULATION_SEED_OFFSET",
    "POPULATION_SIZE",
    "population_available",
    "pretraining_population",
    "pretrain_ct",
    "pretrain_on",
    "read_card",
    "save_label_map",
]

CHECKPOINT_NAME = "ct_encoder.pt"
CHECKPOINT_FORMAT = "prrt-pfs CT encoder, version 1"
"""Written into every model card; bump the version when the checkpoint's layout changes."""


POPULATION_SIZE = 60
"""Patients of the independent synthetic pretraining population (generation and preprocessing take about
1 s a patient on 2 cores; half the study's 116 keeps the book fast and still covers the anatomy)."""

POPULATION_SEED_OFFSET = 1000
"""The independent synthetic population's seed is the cohort's plus this (the second centre uses + 1)."""

POPULATION_ID_PREFIX = "ANAT"
"""Pseudonyms of the independent synthetic population (``ANAT-001`` ...): never a study id."""


class PretrainError(ValueError):
    """Pretraining cannot run as configured (no label maps, unknown label codes, ...)."""


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Config):
    """Settings of CT pretraining.

    Attributes
    ----------
    model : str
        Registry model whose CT encoder is pretrained (its architecture is used).
    population_dir : str
        The pretraining population: a folder in the raw-export layout
        (``imaging/<id>/`` and label maps) of patients OUTSIDE the study; empty =
        an independent synthetic population when the study is synthetic
        (:func:`pretraining_population`), else pretraining cannot run.
    population_size : int
        Patients of the independent synthetic population.
    labels_dir : str
        Folder of the population's ``<patient_id>.nii.gz`` (or ``.nii``) label maps; empty =
        :func:`find_labels` on ``population_dir`` (``ct_labels/``, else the
        synthetic ``ground_truth/labels/``).
    label_map : tuple of str
        ``"code:class"`` for every code that occurs in the label maps, class one
        of :data:`ANATOMY_CLASSES`. A code that is not listed stops the run
        (a silently ignored organ would be taught as background).
    epochs, batch_size, lr, weight_decay
        AdamW on Dice + cross-entropy. 40 epochs: on the synthetic cohort the
        held-out Dice of the large organs levels off by then.
    held_out_fraction : float
        Share of patients kept out of training to measure Dice (by patient).
    ct_window_hu : (float, float)
        CT clipping window before standardisation, as in the PFS models
        (:class:`~prrt_utils.models.inputs.FoldNormaliser`).
    seed : int
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    model: str = "petct_fusion_pretrained"
    population_dir: str = ""
    population_size: int = POPULATION_SIZE
    labels_dir: str = ""
    label_map: tuple[str, ...] = SYNTHETIC_LABEL_MAP
    epochs: int = 40
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 1e-4
    held_out_fraction: float = 0.2
    ct_window_hu: tuple[float, float] = (-1000.0, 1000.0)
    seed: int = SEED
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise PretrainError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if self.population_size < 10:
            raise PretrainError(f"population_size must be >= 10, got {self.population_size}")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise PretrainError(f"held_out_fraction must lie in (0, 0.5), got {self.held_out_fraction}")
        self.lookup()  # validates label_map

    def lookup(self) -> dict[int, int]:
        """``label_map`` as ``source code -> class index``."""
        try:
            return label_lookup(self.label_map)
        except AnatomyError as exc:
            raise PretrainError(str(exc)) from None


def checkpoint_path(work_dir: str | Path) -> Path:
    """Where :func:`pretrain_ct` writes the CT encoder: ``WORK/pretrained/ct_encoder.pt``."""
    return Path(work_dir) / "pretrained" / CHECKPOINT_NAME


def read_card(work_dir: str | Path) -> dict[str, Any] | None:
    """The model card of a finished pretraining, or ``None``."""
    path = Path(work_dir) / "pretrained" / "card.json"
    return json.loads(path.read_text()) if path.is_file() and checkpoint_path(work_dir).is_file() else None


def save_label_map(path: str | Path, labels: np.ndarray, affine: np.ndarray) -> None:
    """Write a canonical ``(D, H, W)`` label array with its voxel -> LPS ``affine`` as NIfTI (atomically).

    The inverse of :func:`prrt_utils.io.nifti.load_label_map`: NIfTI axis ``i``
    is ``W``, ``j`` is ``H``, ``k`` is ``D``, and the affine is RAS. For tests,
    benchmarks and centres converting their own label maps.
    """
    import nibabel as nib

    perm = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float) @ perm
    img = nib.Nifti1Image(np.transpose(np.asarray(labels), (2, 1, 0)).astype(np.uint8), ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    with store.atomic_path(path) as tmp:
        nib.save(img, str(tmp.with_suffix(".nii.gz")))
        tmp.with_suffix(".nii.gz").replace(tmp)


class AnatomySegNet(nn.Module):
    """CT encoder + FCN-style decoder: one 1x1x1 convolution per stage, upsampled and summed.

    Class scores are summed at the resolution of the encoder's first stage
    (``(25, 17, 17)`` for the default stem of stride 3 on ``(75, 50, 50)``);
    :meth:`forward` returns them there (training: 27 times fewer voxels than
    the input, which makes pretraining fit in about a minute on 2 CPU cores)
    or, with ``full=True``, upsampled to the input size (evaluation).
    Input ``(B, 1, D, H, W)``, output ``(B, n_classes, ...)``.
    """

    def __init__(self, encoder: ConvEncoder, n_classes: int = len(ANATOMY_CLASSES)) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        self.encoder = encoder
        widths = [block.conv.out_channels for block in encoder.features]
        self.heads = nn.ModuleList(Convolution(3, c, n_classes, kernel_size=1, conv_only=True) for c in widths)

    def forward(self, x: torch.Tensor, full: bool = False) -> torch.Tensor:
        out, h = None, x
        for block, head in zip(self.encoder.features, self.heads, strict=True):
            h = block(h)
            if out is None:
                out = head(h)
            else:
                out = out + nn.functional.interpolate(head(h), size=out.shape[2:], mode="trilinear",
                                                      align_corners=False)
        if full:
            out = nn.functional.interpolate(out, size=x.shape[2:], mode="trilinear", align_corners=False)
        return out


def coarse_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Labels ``(B, 1, D, H, W)`` at ``size``: the label at the centre of each coarse voxel's block.

    "Centre" in the convention of the trilinear upsampling of :meth:`AnatomySegNet.forward`
    (``align_corners=False``: coarse voxel ``i`` covers input voxels ``[i s, (i + 1) s)``), so
    that what is learned coarse lands on the right input voxels when upsampled (``nearest``
    would take ``i s``, one voxel off for a stride of 3).
    """
    return nn.functional.interpolate(labels.float(), size=tuple(size), mode="nearest-exact").long()


def _ct_encoder(spec: ModelSpec, dropout: float) -> ConvEncoder:
    if spec.kind != "cnn" or "ct" not in spec.image_inputs or spec.encoder != "convnet":
        raise PretrainError(f"model {spec.name!r} has no 'convnet' CT branch to pretrain")
    p = spec.dropout_prob if spec.dropout_prob is not None else dropout
    return ConvEncoder(3, 1, spec.channels, spec.strides, spec.kernel_size, spec.norm, p, spec.pooling)


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain_ct` made (or found cached)."""

    checkpoint: Path
    card: dict[str, Any]
    history: pd.DataFrame
    dice: pd.DataFrame
    skipped: pd.DataFrame
    reused: bool


def _synthetic_study(data_dir: Path) -> bool:
    return (data_dir / "ground_truth" / "truth.csv").is_file() and (data_dir / "config.yaml").is_file()


def population_available(data_dir: str | Path, population_dir: str | Path = "") -> bool:
    """True when CT pretraining has a population other than the study: one given, or the study is synthetic."""
    return bool(population_dir) or _synthetic_study(Path(data_dir))


def pretraining_population(data_dir: str | Path, cfg: PretrainConfig, n_jobs: int = 1) -> tuple[Path, dict[str, Any]]:
    """The raw export pretraining reads, never the study's own; generated when it is the synthetic one.

    Parameters
    ----------
    data_dir : path
        The STUDY's raw export.
    cfg : PretrainConfig
        ``population_dir`` given: that folder (a separate set of a centre).
        Empty and the study synthetic: the independent synthetic population
        ``<data_dir>-pretrain/`` (seed = the cohort's + :data:`POPULATION_SEED_OFFSET`,
        ``cfg.population_size`` patients, ids ``ANAT-...``), generated if missing.

    Returns
    -------
    (path, description)
        ``description`` goes into the model card (kind, size, seed, where).

    Raises
    ------
    PretrainError
        No separate population (an own cohort without ``population_dir``), or
        ``population_dir`` is the study's own export.
    """
    data_dir = Path(data_dir)
    if cfg.population_dir:
        pop = Path(cfg.population_dir)
        if not (pop / "imaging").is_dir():
            raise PretrainError(f"pretraining population {pop} has no imaging/ folder (raw-export layout: "
                                "imaging/<id>/ and ct_labels/<id>.nii.gz with codes.json)")
        if pop.resolve() == data_dir.resolve():
            raise PretrainError(f"pretraining population {pop} is the study's own export: CT pretraining must use "
                                "patients outside the study (a separate set)")
        return pop, {"kind": "a separate set given by the centre (population_dir)", "folder": pop.name}
    if not _synthetic_study(data_dir):
        raise PretrainError(
            "CT pretraining never uses the study's own patients (their CT and lesion labels would leak into "
            "the test folds). Give a separate set of patients outside the study (population_dir / "
            "--pretrain-data: imaging/<id>/ and ct_labels/<id>.nii.gz with codes.json), start the CT branch "
            "from a checkpoint (--ct-init PATH) or from scratch (--ct-init none)")

    study = SynthConfig.from_yaml(data_dir / "config.yaml")
    synth_cfg = SynthConfig(n_patients=cfg.population_size, seed=study.seed + POPULATION_SEED_OFFSET,
                            id_prefix=POPULATION_ID_PREFIX, image_format="nifti")
    pop = data_dir.parent / f"{data_dir.name}-pretrain"
    generate_cohort(synth_cfg, pop, progress=False, n_jobs=n_jobs, overwrite=True)  # ours: regenerated when its size changes
    return pop, {"kind": "an independent synthetic population (no study patient)", "folder": pop.name,
                 "synthetic_seed": synth_cfg.seed, "study_seed": study.seed}


def _study_ids(work_dir: Path) -> set[str]:
    """Every patient id of the study: its preprocessed index and, when there, its cohort table."""
    ids: set[str] = set()
    for path in (work_dir / "preprocessed" / "index.csv", work_dir / "cohort" / "cohort.csv"):
        if path.is_file():
            ids |= set(pd.read_csv(path, dtype={"patient_id": str}, usecols=["patient_id"])["patient_id"])
    return ids


def _preprocess_population(work_dir: Path, population: Path, n_jobs: int) -> Path:
    """Preprocess the population with the study's settings into ``WORK/pretrained/population/``; return that."""

    settings = work_dir / "preprocessed" / "config.yaml"
    if not settings.is_file():
        raise PretrainError(f"{settings} not found: run the preprocessing stage first (prrt preprocess)")
    pop_work = work_dir / "pretrained" / "population"
    run_preprocessing(PreprocessConfig.from_yaml(settings), None, population / "imaging", pop_work,
                      progress=False, n_jobs=n_jobs)
    return pop_work


def _inputs(cfg: PretrainConfig, work_dir: Path, labels_dir: Path) -> tuple[list[str], list[Path], list[Path], pd.DataFrame]:
    """Patients with a preprocessed CT and a label map; the others with the reason."""
    index_csv = work_dir / "preprocessed" / "index.csv"
    if not index_csv.is_file():
        raise PretrainError(f"{index_csv} not found: run the preprocessing stage first (prrt preprocess)")
    index = pd.read_csv(index_csv, dtype={"patient_id": str})
    ids, volumes, maps, skipped = [], [], [], []
    for row in index.itertuples():
        if row.status != "ok":
            skipped.append((row.patient_id, "no preprocessed images"))
            continue
        found = label_map_path(labels_dir, row.patient_id)
        if found is None:
            skipped.append((row.patient_id, "no label map"))
            continue
        ids.append(row.patient_id)
        volumes.append(store.child(work_dir / "preprocessed", row.file))
        maps.append(found)
    return ids, volumes, maps, pd.DataFrame(skipped, columns=["patient_id", "reason"])


def _cache_key(cfg: PretrainConfig, spec: ModelSpec, ids: list[str], volumes: list[Path], maps: list[Path]) -> str:
    h = hashlib.sha256(json.dumps({"config": cfg.to_dict(), "model": spec.to_dict()}, sort_keys=True).encode())
    for pid, v, m in zip(ids, volumes, maps, strict=True):
        h.update(f"{pid}:{store.sha256_file(v)}:{store.sha256_file(m)}".encode())
    return h.hexdigest()


def _load_pairs(ids: list[str], volumes: list[Path], maps: list[Path], lookup: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:

    cts, segs = [], []
    table = np.full(max(max(lookup), 0) + 1, -1, dtype=np.int64)
    for code, cls in lookup.items():
        table[code] = cls
    for pid, vol, lab in zip(ids, volumes, maps, strict=True):
        with np.load(vol) as z:
            ct, grid_affine = z["ct"].astype(np.float32), z["affine"]
        labels, affine = load_label_map(lab, pid)
        codes = np.unique(labels)
        unknown = [int(c) for c in codes if c >= len(table) or table[c] < 0]
        if unknown:
            raise PretrainError(f"patient {pid}: label map {lab.name} has code(s) {unknown} that label_map does not list")
        segs.append(table[labels_on_grid(labels, affine, grid_affine, ct.shape)])
        cts.append(ct)
    return np.stack(cts)[:, None], np.stack(segs)[:, None]


def pretrain_ct(work_dir: str | Path, data_dir: str | Path = "data/synthetic", cfg: PretrainConfig | None = None,
                force: bool = False, threads: int | None = None, progress: bool = False,
                n_jobs: int = 1) -> PretrainResult:
    """Pretrain the CT encoder of ``cfg.model`` on anatomy segmentation; reuse a finished run.

    Parameters
    ----------
    work_dir : path
        ``WORK``: reads the study's ``preprocessed/config.yaml`` and ids (never
        its volumes); writes ``pretrained/`` (the population's preprocessed
        volumes in ``pretrained/population/``).
    data_dir : path
        The study's cohort folder: where the independent synthetic population
        is generated beside it (:func:`pretraining_population`); the study's
        own label maps are never read here.
    cfg : PretrainConfig, optional
    force : bool
        Train again even when a checkpoint with the same key exists.
    threads : int, optional
        ``torch.set_num_threads`` while training (default: all cores).
    n_jobs : int
        Worker processes for generating and preprocessing the population.
    """
    cfg = cfg or PretrainConfig()
    work_dir = Path(work_dir)
    t_population = time.perf_counter()
    population, described = pretraining_population(data_dir, cfg, n_jobs=n_jobs)
    labels_dir, codes = find_labels(population, cfg.labels_dir)
    if labels_dir is None or not labels_dir.is_dir():
        raise PretrainError(
            f"label map folder {labels_dir or population / 'ct_labels'} not found. CT pretraining needs one "
            "NIfTI label map per patient of the pretraining population (e.g. TotalSegmentator outputs in "
            "ct_labels/ with codes.json), or start the CT branch from a checkpoint (--ct-init PATH) or from "
            "scratch (--ct-init none)"
        )
    if codes:
        cfg = cfg.replace(label_map=codes)
    pop_work = _preprocess_population(work_dir, population, n_jobs)
    described = {**described, "seconds_generate_and_preprocess": round(time.perf_counter() - t_population, 1)}
    return pretrain_on(work_dir, pop_work, labels_dir, cfg, described, force=force, threads=threads,
                       progress=progress)


def pretrain_on(work_dir: str | Path, population_work: str | Path, labels_dir: str | Path, cfg: PretrainConfig,
                population: dict[str, Any] | None = None, force: bool = False, threads: int | None = None,
                progress: bool = False) -> PretrainResult:
    """Pretrain on a population that is already preprocessed; refuse any study patient among it.

    Parameters
    ----------
    work_dir : path
        The study's ``WORK``: its patient ids (``preprocessed/index.csv``,
        ``cohort/cohort.csv``) are read only to be excluded; writes ``pretrained/``.
    population_work : path
        Holds the population's ``preprocessed/`` (index and volumes).
    labels_dir : path
        The population's label maps (``<patient_id>.nii.gz``), codes in ``cfg.label_map``.
    population : dict, optional
        How the population was made, for the model card.

    Raises
    ------
    PretrainError
        A patient id of the population is a study id, fewer than 10 usable
        patients, or label codes that ``cfg.label_map`` does not list.
    """
    from monai.losses import DiceCELoss
    from monai.metrics import compute_dice


    work_dir, labels_dir = Path(work_dir), Path(labels_dir)
    out = work_dir / "pretrained"
    spec = get_spec(cfg.model)
    study = _study_ids(work_dir)
    ids, volumes, maps, skipped = _inputs(cfg, Path(population_work), labels_dir)
    shared = sorted(set(ids) & study)
    if shared:
        raise PretrainError(f"patient {shared[0]} (and {len(shared) - 1} more) of the pretraining population is a "
                            "study patient: CT pretraining must use patients outside the study")
    if len(ids) < 10:
        raise PretrainError(f"only {len(ids)} patient(s) have both a preprocessed CT and a label map in {labels_dir}; need 10")
    key = _cache_key(cfg, spec, ids, volumes, maps)
    card = read_card(work_dir)
    if card is not None and card.get("key") == key and card.get("format") == CHECKPOINT_FORMAT and not force:
        return PretrainResult(checkpoint_path(work_dir), card, pd.read_csv(out / "history.csv"),
                              pd.read_csv(out / "dice.csv"), skipped, reused=True)

    t0 = time.perf_counter()
    ct, seg = _load_pairs(ids, volumes, maps, cfg.lookup())
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(ids))
    n_held = max(2, int(round(cfg.held_out_fraction * len(ids))))
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    norm = FoldNormaliser(ct_window_hu=cfg.ct_window_hu).fit({"ct": ct[train]})
    x = torch.from_numpy(norm.transform({"ct": ct})["ct"])
    y = torch.from_numpy(seg.astype(np.int64))

    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(cfg.seed)
    try:
        with deterministic(device):
            encoder = _ct_encoder(spec, dropout=0.1)
            net = AnatomySegNet(encoder).to(device)
            loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
            opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            net.eval()
            with torch.no_grad():
                y_coarse = coarse_labels(y, net(x[:1].to(device)).shape[2:])
            gen = torch.Generator().manual_seed(cfg.seed)
            history = []
            bar = range(cfg.epochs)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(bar, desc="pretraining CT encoder", unit="epoch")
            for epoch in bar:
                net.train()
                perm = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
                batches = list(torch.split(perm, cfg.batch_size))
                if len(batches) > 1 and len(batches[-1]) < 2:
                    batches[-2] = torch.cat([batches[-2], batches.pop()])
                total = 0.0
                for idx in batches:
                    opt.zero_grad(set_to_none=True)
                    logits = net(x[idx].to(device))
                    loss = loss_fn(logits, y_coarse[idx].to(device))
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                net.eval()
                with torch.no_grad():
                    held_loss = float(loss_fn(net(x[held].to(device)), y_coarse[held].to(device)))
                history.append({"epoch": epoch + 1, "train_loss": total / len(train), "held_out_loss": held_loss})
            net.eval()
            with torch.no_grad():
                pred = torch.cat([net(x[held[i:i + 8]].to(device), full=True).argmax(1, keepdim=True).cpu()
                                  for i in range(0, len(held), 8)])
    finally:
        torch.set_num_threads(old_threads)
    n_cls = len(ANATOMY_CLASSES)
    onehot = lambda t: nn.functional.one_hot(t[:, 0], n_cls).permute(0, 4, 1, 2, 3).float()  # noqa: E731
    dice_pp = compute_dice(onehot(pred), onehot(y[held]), include_background=False, ignore_empty=True).numpy()
    # the best Dice this training resolution allows: the true labels made coarse and upsampled back
    back = nn.functional.interpolate(onehot(y_coarse[held]), size=y.shape[2:], mode="trilinear",
                                     align_corners=False).argmax(1, keepdim=True)
    ceiling = compute_dice(onehot(back), onehot(y[held]), include_background=False, ignore_empty=True).numpy()
    with warnings.catch_warnings():  # a class absent from every held-out patient has no Dice (NaN)
        warnings.simplefilter("ignore", RuntimeWarning)
        dice = pd.DataFrame({
            "class": ANATOMY_CLASSES[1:],
            "dice_mean": np.nanmean(dice_pp, axis=0),
            "dice_sd": np.nanstd(dice_pp, axis=0),
            "dice_ceiling": np.nanmean(ceiling, axis=0),
        "patients_with_class": (~np.isnan(dice_pp)).sum(axis=0),
            "voxels_per_patient": [float((seg[held] == c).sum() / len(held)) for c in range(1, n_cls)],
        })
    seconds = time.perf_counter() - t0
    import platform

    import monai


    card = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "created_for_model": spec.name,
        "encoder": {"channels": list(spec.channels), "strides": list(spec.strides),
                    "kernel_size": spec.kernel_size, "norm": spec.norm, "pooling": spec.pooling},
        "task": "anatomy segmentation (no outcome used)",
        "classes": list(ANATOMY_CLASSES),
        "labels_source": ("synthetic ground truth" if labels_dir.parent.name == "ground_truth"
                          else "the population's own label maps"),
        "population": {"kind": "a separate set (preprocessed)", "folder": Path(population_work).name,
                       "seconds_generate_and_preprocess": 0.0, **(population or {}),
                       "n_patients": len(ids), "study_patients": 0,
                       "lesion_class": ("taught, from the pretraining population only (no study patient)"
                                        if ANATOMY_CLASSES.index("lesion") in cfg.lookup().values() else "not taught")},
        "n_train": int(len(train)),
        "n_held_out": int(len(held)),
        "n_skipped": int(len(skipped)),
        "config": cfg.to_dict(),
        "ct_normalisation": norm.to_dict(),
        "final_train_loss": history[-1]["train_loss"],
        "final_held_out_loss": history[-1]["held_out_loss"],
        "held_out_dice_mean_foreground": float(np.nanmean(dice["dice_mean"])),
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads() if not threads else int(threads),
        "device": str(device),
        "versions": {"prrt_pfs": __version__, "torch": str(torch.__version__), "monai": monai.__version__,
                     "python": platform.python_version()},
    }
    store.write_csv(out / "history.csv", pd.DataFrame(history))
    store.write_csv(out / "dice.csv", dice)
    store.write_csv(out / "split.csv", pd.DataFrame({
        "patient_id": [ids[i] for i in train] + [ids[i] for i in held],
        "part": ["train"] * len(train) + ["held_out"] * len(held)}))
    store.write_csv(out / "skipped.csv", skipped)
    store.write_text(out / "config.yaml", cfg.to_yaml())
    with store.atomic_path(checkpoint_path(work_dir)) as tmp:
        torch.save({"state_dict": {k: v.cpu() for k, v in encoder.state_dict().items()}, "card": card}, tmp)
    card["checkpoint_sha256"] = store.sha256_file(checkpoint_path(work_dir))
    store.write_json(out / "card.json", card)  # last: marks the run finished
    return PretrainResult(checkpoint_path(work_dir), card, pd.DataFrame(history), dice, skipped, reused=False)


# --------------------------------------------------------------------------- the CT pretraining page


def card_markdown(card: dict[str, Any], cfg: PretrainConfig, reused: bool = False) -> str:
    """The model card of a pretrained CT encoder as Markdown bullets (the CT pretraining page)."""
    pop = card["population"]
    return (
        f"- **Task**: {card['task']}; {len(card['classes']) - 1} classes plus background.\n"
        f"- **Population**: {pop['kind']} (`{pop['folder']}`"
        + (f", generator seed {pop['synthetic_seed']} against the cohort's {pop['study_seed']}"
           if "synthetic_seed" in pop else "")
        + f"), {pop['n_patients']} patients, **{pop['study_patients']} study "
        f"patients**; lesion class {pop['lesion_class']}. Generating and preprocessing it took "
        f"{pop['seconds_generate_and_preprocess']:.0f} s in the run that trained this checkpoint.\n"
        f"- **Labels**: {card['labels_source']}.\n"
        f"- **Data**: {card['n_train']} patients trained, {card['n_held_out']} held out (by patient, seed {cfg.seed}); "
        f"{card['n_skipped']} without a label map or preprocessed CT skipped.\n"
        f"- **Encoder**: the CT branch of `{card['created_for_model']}` "
        f"(channels {card['encoder']['channels']}, strides {card['encoder']['strides']}); decoder: one 1x1x1 "
        "convolution per stage, discarded after pretraining.\n"
        f"- **Training**: {cfg.epochs} epochs, AdamW, learning rate {cfg.lr}, Dice + cross-entropy "
        f"(MONAI `DiceCELoss`) at the resolution of the encoder's first stage, "
        f"{card['seconds']:.0f} s on {card['device']} with {card['threads']} thread(s)"
        f"{' (this run reused the cached checkpoint)' if reused else ''}.\n"
        f"- **Held-out Dice** (mean over foreground classes): {card['held_out_dice_mean_foreground']:.2f}.\n"
        f"- **Checkpoint**: `pretrained/ct_encoder.pt` in the work folder, SHA-256 "
        f"`{card['checkpoint_sha256'][:16]}…`.")


def dice_verdict(dice: pd.DataFrame, learned_at: float = 0.5, not_learned_below: float = 0.1) -> str:
    """Which classes were segmented well (mean held-out Dice ≥ ``learned_at``) and which not (< ``not_learned_below``)."""
    learned = dice.loc[dice["dice_mean"] >= learned_at, "class"].tolist()
    not_learned = dice.loc[dice["dice_mean"] < not_learned_below, "class"].tolist()
    return (f"Classes segmented with Dice ≥ {learned_at:g} on held-out patients: **{', '.join(learned) or 'none'}**. "
            f"Not learned (Dice < {not_learned_below:g}): **{', '.join(not_learned) or 'none'}**.")


def loss_figure(history: pd.DataFrame) -> Any:
    """Dice + cross-entropy per epoch on the training and the held-out patients (plotly)."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=name)
                     for col, name in (("train_loss", "training patients"), ("held_out_loss", "held-out patients"))])
    fig.update_layout(xaxis_title="epoch", yaxis_title="Dice + cross-entropy loss", height=360,
                      title="CT pretraining on anatomy")
    return fig


@dataclasses.dataclass(frozen=True)
class PretrainPage:
    """What the CT pretraining page shows: where the seventh model's CT branch starts and, when pretrained here,
    the model card, the losses, the held-out Dice and what the model loads.

    Attributes
    ----------
    cfg : PretrainConfig
    start : str
        ``"pretrain-ct"`` (pretrained in this run), ``"none"`` (from scratch) or a checkpoint path.
    result : PretrainResult or None
        :func:`pretrain_ct`'s result when this run pretrained.
    population_found : bool
        Whether a pretraining population outside the study was available.
    """

    cfg: PretrainConfig
    start: str
    result: Any = None
    population_found: bool = False

    def statement(self) -> Any:
        """The pretraining settings (text) when this run pretrained; else where the CT branch starts (Markdown)."""
        from IPython.display import Markdown

        if self.result is not None:
            return self.cfg.to_yaml()
        if self.start == "none":
            return Markdown(
                "**CT pretraining did not run, and the seventh model's CT branch is trained FROM SCRATCH in this run** "
                + ("(no pretraining population outside the study was given, and the study's own patients are never "
                   "used: give a separate set with `--pretrain-data DIR`, or a checkpoint with `--ct-init PATH`). "
                   if not self.population_found else "(`ct_init: none` was asked for). ")
                + "It then differs from PET CT fusion only by its random initialisation.")
        return Markdown(f"**CT pretraining did not run: the CT branch starts from the checkpoint "
                        f"`{Path(self.start).name}` given by path (route 2).** What it holds for the CT encoder is "
                        "reported on the model's page.")

    def card(self) -> Any:
        """:func:`card_markdown` (as Markdown) of the checkpoint made or reused here, else ``None``."""
        from IPython.display import Markdown

        return None if self.result is None else Markdown(card_markdown(self.result.card, self.cfg, self.result.reused))

    def losses(self) -> Any:
        """:func:`loss_figure` of this run's pretraining, else ``None``."""
        return None if self.result is None else loss_figure(self.result.history)

    def dice(self) -> tuple[Any, ...]:
        """Held-out Dice per class (rounded) and :func:`dice_verdict`; empty when nothing was pretrained."""
        if self.result is None:
            return ()
        dice = self.result.dice.round({"dice_mean": 3, "dice_sd": 3, "dice_ceiling": 3, "voxels_per_patient": 0})
        from IPython.display import Markdown

        return dice, Markdown(dice_verdict(dice))

    def load_check(self) -> tuple[Any, ...]:
        """Load the checkpoint into a fresh CT branch of the model: the summary line and the tensors loaded."""

        if self.result is None:
            return ()
        spec = get_spec(self.cfg.model)
        fresh = ConvEncoder(3, 1, spec.channels, spec.strides, spec.kernel_size, spec.norm, 0.1, spec.pooling)
        loaded = load_encoder_checkpoint(fresh, self.result.checkpoint, model=spec.name)
        return loaded.summary(), pd.Series(loaded.loaded, name="loaded tensors").to_frame()


def pretrain_page(work_dir: str | Path, data_dir: str | Path, cfg: PretrainConfig, ct_init: str = "",
                  population_dir: str | Path = "", n_jobs: int = 1) -> PretrainPage:
    """Pretrain the CT encoder when the model starts from :data:`prrt_utils.models.networks.PRETRAIN_CT`; else say where
    it starts.

    ``ct_init`` overrides the model's declaration (``"none"`` or a checkpoint path); empty keeps it.
    """

    spec = get_spec(cfg.model)
    start = ct_init or ("none" if spec.ct_init is None else str(spec.ct_init))
    result = pretrain_ct(work_dir, data_dir, cfg, progress=False, n_jobs=n_jobs) if start == PRETRAIN_CT else None
    found = population_available(data_dir, population_dir) if start == "none" else False
    return PretrainPage(cfg=cfg, start=start, result=result, population_found=found)
