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

No outcome is read: the patients whose CT is used here may later fall in any
test fold of the PFS models without leaking their PFS. (Their CT images were
seen; a reviewer who wants pretraining on separate patients points
``labels_dir`` at label maps of patients outside the cohort.)

Network: the encoder is exactly the CT branch the seventh model builds
(:class:`~prrt_utils.models.ConvEncoder` from its :class:`ModelSpec`), so
every one of its tensors loads by name. A light decoder (one 1x1x1 MONAI
convolution per encoder stage, upsampled trilinearly to the input size and
summed, FCN-style) turns each stage's features into class scores; it is thrown
away after pretraining. Written here because the decoder must hang off our own
encoder; MONAI's segmentation networks (UNet, SegResNet) bring their own
encoders, whose checkpoints route 2 (:func:`prrt_utils.models.load_encoder_checkpoint`)
loads instead. Loss: MONAI :class:`~monai.losses.DiceCELoss`; held-out Dice
per class at full resolution: :func:`monai.metrics.compute_dice`.

Files (``WORK/pretrained/``): ``ct_encoder.pt`` (``{"state_dict": encoder
weights, "card": model card}``, written atomically), ``history.csv`` (loss per
epoch), ``dice.csv`` (held-out Dice per class, beside its ceiling: the Dice of
the true labels taken to the training resolution and back), ``split.csv`` (which patients
trained and which were held out: ids only), ``skipped.csv``, ``config.yaml`` and, written last, ``card.json``
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

from prrt_utils import store
from prrt_utils.anatomy import (
    ANATOMY_CLASSES,
    SYNTHETIC_LABEL_MAP,
    AnatomyError,
    find_labels,
    label_lookup,
    label_map_path,
    labels_on_grid,
)
from prrt_utils.config import SEED, Config
from prrt_utils.models import ConvEncoder, ModelSpec, get_spec

__all__ = [
    "ANATOMY_CLASSES",
    "CHECKPOINT_NAME",
    "SYNTHETIC_LABEL_MAP",
    "AnatomySegNet",
    "coarse_labels",
    "find_labels",
    "PretrainConfig",
    "PretrainError",
    "PretrainResult",
    "checkpoint_path",
    "labels_on_grid",
    "pretrain_ct",
    "read_card",
    "save_label_map",
]

CHECKPOINT_NAME = "ct_encoder.pt"
CHECKPOINT_FORMAT = "prrt-pfs CT encoder, version 1"
"""Written into every model card; bump the version when the checkpoint's layout changes."""


class PretrainError(ValueError):
    """Pretraining cannot run as configured (no label maps, unknown label codes, ...)."""


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Config):
    """Settings of CT pretraining.

    Attributes
    ----------
    model : str
        Registry model whose CT encoder is pretrained (its architecture is used).
    labels_dir : str
        Folder of ``<patient_id>.nii.gz`` (or ``.nii``) label maps; empty =
        :func:`find_labels` (an own cohort's ``DATA/ct_labels``, else the
        synthetic cohort's ``DATA/ground_truth/labels``).
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
        (:class:`~prrt_utils.training.FoldNormaliser`).
    seed : int
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    model: str = "petct_fusion_pretrained"
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

    The inverse of :func:`prrt_utils.loading.load_label_map`: NIfTI axis ``i``
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
        volumes.append(work_dir / "preprocessed" / row.file)
        maps.append(found)
    return ids, volumes, maps, pd.DataFrame(skipped, columns=["patient_id", "reason"])


def _cache_key(cfg: PretrainConfig, spec: ModelSpec, ids: list[str], volumes: list[Path], maps: list[Path]) -> str:
    h = hashlib.sha256(json.dumps({"config": cfg.to_dict(), "model": spec.to_dict()}, sort_keys=True).encode())
    for pid, v, m in zip(ids, volumes, maps, strict=True):
        h.update(f"{pid}:{store.sha256_file(v)}:{store.sha256_file(m)}".encode())
    return h.hexdigest()


def _load_pairs(ids: list[str], volumes: list[Path], maps: list[Path], lookup: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from prrt_utils.loading import load_label_map

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
                force: bool = False, threads: int | None = None, progress: bool = False) -> PretrainResult:
    """Pretrain the CT encoder of ``cfg.model`` on anatomy segmentation; reuse a finished run.

    Parameters
    ----------
    work_dir : path
        ``WORK``: reads ``preprocessed/``; writes ``pretrained/``.
    data_dir : path
        Cohort folder; label maps default to ``DATA/ground_truth/labels``.
    cfg : PretrainConfig, optional
    force : bool
        Train again even when a checkpoint with the same key exists.
    threads : int, optional
        ``torch.set_num_threads`` while training (default: all cores).
    """
    from monai.losses import DiceCELoss
    from monai.metrics import compute_dice

    from prrt_utils.training import FoldNormaliser, _deterministic, resolve_device, seed_everything

    cfg = cfg or PretrainConfig()
    work_dir = Path(work_dir)
    out = work_dir / "pretrained"
    labels_dir, codes = find_labels(data_dir, cfg.labels_dir)
    if labels_dir is None or not labels_dir.is_dir():
        raise PretrainError(
            f"label map folder {labels_dir or Path(data_dir) / 'ct_labels'} not found. CT pretraining needs one "
            "NIfTI label map per patient: the synthetic cohort ships them; for your own cohort give ct_labels and "
            "ct_label_codes in COHORT.yaml (e.g. TotalSegmentator outputs), or start the CT branch from a "
            "checkpoint (--ct-init PATH) or from scratch (--ct-init none)"
        )
    if codes:
        cfg = cfg.replace(label_map=codes)
    spec = get_spec(cfg.model)
    ids, volumes, maps, skipped = _inputs(cfg, work_dir, labels_dir)
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
        with _deterministic(device):
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

    from prrt_utils import __version__

    card = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "created_for_model": spec.name,
        "encoder": {"channels": list(spec.channels), "strides": list(spec.strides),
                    "kernel_size": spec.kernel_size, "norm": spec.norm, "pooling": spec.pooling},
        "task": "anatomy segmentation (no outcome used)",
        "classes": list(ANATOMY_CLASSES),
        "labels_source": ("synthetic ground truth" if labels_dir.parent.name == "ground_truth"
                          else "the cohort's own label maps"),
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
