"""The seven models of the paper, declared as data, and the networks they build (paper 2.5).

A model is a :class:`ModelSpec`: which inputs it sees (laboratory values, PET,
CT), whether it is a Random Forest or a CNN, the encoder and head
hyper-parameters, and where a pretrained CT branch comes from. The seven
models of the paper ship as YAML files in ``models/`` (one file per model,
file name = model key); :func:`load_registry` reads them. An analyst adds an
eighth model by writing one more YAML file of a few lines, e.g.::

    # models/pet_fusion_wide.yaml
    name: pet_fusion_wide
    inputs: [pet, labs]
    kind: cnn
    channels: [16, 32, 64]

Networks
--------
* Image encoder (:class:`ConvEncoder`): a small 3D CNN of MONAI
  :class:`~monai.networks.blocks.Convolution` blocks (convolution, batch
  norm, dropout, ReLU). The first block has a stride of 3 ("stem"): on a
  ``(75, 50, 50)`` volume it is the cheapest way to reach a receptive field
  of lesion size, and it makes the CPU protocol fit in minutes (see
  ``bench/bench_models.py``).
* PET branch (:class:`UptakeCountEncoder`, issue 14): learned thresholds in
  multiples of the liver, counted over the body; ``pet_encoder: convnet``
  gives PET the CT branch's kind of encoder instead.
* Embedding: the paper flattens the encoder output. We pool globally by
  default (``pooling="logavgmax"``: the log of the global average, so that a
  volume's relative changes become steps of ordinary size, and the global
  maximum, concatenated) and keep ``"avgmax"`` and ``"flatten"`` as options. Why: with about 77
  training patients a flattened map gives thousands of position-specific
  features that the head memorises, and the four lab values drown among
  them; pooled features are translation invariant (a liver lesion counts the
  same wherever the liver sits) and are what the synthetic ground truth
  depends on (tumour burden ~ mean activation, lesion uptake ~ max).
* Fusion (paper 2.5): the image embeddings and the standardised laboratory
  values are concatenated and passed through a 3-layer MLP (two hidden
  layers, ReLU and dropout, then one output logit).
* Random Forest: :class:`sklearn.ensemble.RandomForestClassifier` on the
  four laboratory values.
* Reference encoder: ``encoder="resnet10"`` uses MONAI's
  :func:`~monai.networks.nets.resnet10` (the MedicalNet family); it is used
  by the benchmark for comparison and can carry a pretrained CT checkpoint.

Pretrained CT branch
--------------------
``ct_init`` says where the CT encoder's weights start (:attr:`ModelSpec.ct_init_note`
says it in plain words; the book prints that note):

* ``null``: from scratch (random initialisation);
* ``pretrain-ct`` (route 1, the seventh model's default): the checkpoint that
  ``prrt pretrain-ct`` (:mod:`prrt_utils.models.pretrain`) trained on anatomy in
  ``WORK/pretrained/ct_encoder.pt``; :func:`resolve_ct_init` turns the word
  into that path for a work folder;
* a path (route 2): a centre's own checkpoint, e.g. the ``models/model.pt`` of
  a MONAI CT segmentation bundle. :func:`load_encoder_checkpoint` maps its
  tensors onto the encoder by name (finding the prefix under which the encoder
  sits), reports which were loaded and which were not, and stops when a
  matching name has another shape. For a SegResNet bundle declare the model
  with ``encoder: segresnet`` (:class:`SegResNetEncoder`, the bundle
  network's own encoder half) and the bundle's ``channels: [init_filters]``,
  ``blocks_down`` and ``norm: group``.

A path that does not exist is an error, never a silent fallback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prrt_utils.data.cohort import LAB_COLUMNS  # the cohort stage owns the list of lab inputs
from prrt_utils.data.paper import MODEL_KEYS
from prrt_utils.io import store
from prrt_utils.io.config import Config, choices, field_problems, problems_message

__all__ = [
    "IMAGE_INPUTS",
    "IMG_SIZE",
    "INPUT_ORDER",
    "LAB_COLUMNS",
    "PAPER_MODEL_KEYS",
    "BASELINE_KEYS",
    "BASELINE_NAMES",
    "ConvEncoder",
    "FusionHead",
    "FusionNet",
    "ModelError",
    "ModelSpec",
    "PRETRAIN_CT",
    "LoadReport",
    "Resnet10Encoder",
    "UptakeCountEncoder",
    "SegResNetEncoder",
    "build_network",
    "get_spec",
    "load_encoder_checkpoint",
    "load_registry",
    "make_forest",
    "make_logistic",
    "models_dir",
    "override_ct_init",
    "pretrained_ct_path",
    "resolve_ct_init",
]

INPUT_ORDER: tuple[str, ...] = ("pet", "ct", "labs")
"""Canonical order of inputs: :meth:`FusionNet.forward` takes its tensors in this order."""

IMAGE_INPUTS: tuple[str, ...] = ("pet", "ct")

IMG_SIZE: tuple[int, int, int] = (75, 50, 50)
"""``(D, H, W)`` of the preprocessed volumes (paper 2.5; DESIGN "Preprocessed volumes")."""

PAPER_MODEL_KEYS: tuple[str, ...] = MODEL_KEYS
"""The seven models of the paper in the order of its Table 2 (from :mod:`prrt_utils.data.paper`)."""

BASELINE_KEYS: tuple[str, ...] = ("lr_labs", "radiomics_lr")
"""Baselines beside the paper's seven (``models/*.yaml``): logistic regressions on the labs and on PET radiomics."""

BASELINE_NAMES: dict[str, str] = {"lr_labs": "Logistic regression (labs)",
                                  "radiomics_lr": "Logistic regression (PET radiomics)"}
"""Name of each baseline in the book's tables and figures (the paper's seven: ``paper.DISPLAY_NAMES``)."""

Kind = Literal["random_forest", "logistic", "cnn"]
EncoderName = Literal["convnet", "resnet10", "segresnet"]
PetEncoderName = Literal["count", "convnet"]
Pooling = Literal["logavgmax", "avgmax", "avg", "max", "flatten"]
KINDS = choices(Kind)
ENCODERS = choices(EncoderName)

PRETRAIN_CT = "pretrain-ct"
"""Value of ``ct_init`` meaning "the checkpoint ``prrt pretrain-ct`` wrote into the work folder" (route 1)."""


def pretrained_ct_path(work_dir: str | Path) -> Path:
    """Where CT pretraining (:mod:`prrt_utils.models.pretrain`) writes its checkpoint: ``WORK/pretrained/ct_encoder.pt``."""
    return Path(work_dir) / "pretrained" / "ct_encoder.pt"
POOLINGS = choices(Pooling)
LOG_POOL_EPS = 1e-4
"""Added to the global mean before its log in ``pooling="logavgmax"`` (a channel that is zero everywhere)."""


class ModelError(ValueError):
    """A model declaration or checkpoint that cannot be used."""


@dataclasses.dataclass(frozen=True)
class ModelSpec(Config):
    """Declaration of one model (paper 2.5, Figure 1).

    Attributes
    ----------
    name : str
        Key of the model (``results/<name>/``); the YAML file is ``models/<name>.yaml``.
    inputs : tuple of str
        Subset of ``("labs", "pet", "ct")``.
    kind : {"cnn", "random_forest", "logistic"}
        A Random Forest takes ``("labs",)`` only. A logistic regression
        (the baselines beside the paper's seven) takes the labs and/or the
        PET radiomics features of :mod:`prrt_utils.models.radiomics` (input ``pet``).
    description : str
        One line for the book.
    encoder : {"convnet", "resnet10", "segresnet"}
        Image encoder: the project's small MONAI CNN, MONAI's ``resnet10``, or
        the encoder half of MONAI's ``SegResNet`` (to load a SegResNet CT
        segmentation bundle's weights).
    channels : tuple of int
        Output channels of the encoder's convolution blocks (``segresnet``:
        ``channels[0]`` is ``init_filters``; each level doubles it).
    blocks_down : tuple of int
        ``segresnet`` only: residual blocks per level (MONAI's ``blocks_down``).
    strides : tuple of int
        Stride of each block (same length as ``channels``).
    pet_encoder : {"count", "convnet"}
        PET branch: ``"count"`` (:class:`UptakeCountEncoder`, learned
        thresholds in multiples of the liver, counted over the whole body) or
        ``"convnet"`` (the blocks above, the paper's kind of encoder). The CT
        branch is always ``encoder``.
    thresholds : tuple of float
        Initial thresholds of the ``"count"`` PET encoder, in multiples of the
        liver reference.
    kernel_size : int
        Convolution kernel size of every block.
    norm : str or None
        MONAI norm name (``"batch"``, ``"instance"``) or ``None``; for
        ``segresnet``, ``"group"`` is SegResNet's own group norm (8 groups).
    pooling : {"logavgmax", "avgmax", "avg", "max", "flatten"}
        How the encoder output becomes a vector (module docstring says why
        ``logavgmax`` is the default and ``flatten`` the paper's).
    dropout_prob : float or None
        Dropout in encoder and head; ``None`` takes :attr:`TrainConfig.dropout`
        (0.1, the paper's).
    head : tuple of int
        Widths of the two hidden layers of the 3-layer MLP head (the third
        layer has one output, the logit of short PFS).
    ct_init : Path or None
        Where the CT encoder starts: ``None`` (from scratch), ``pretrain-ct``
        (route 1) or a checkpoint path (route 2); see the module docstring.
    ct_init_prefix : str or None
        Route 2: the prefix under which the encoder's tensors sit in the
        checkpoint (e.g. ``"model."``); ``None`` finds it.
    n_estimators, min_samples_leaf, max_features
        Random Forest hyper-parameters (scikit-learn names).
    """

    name: str
    inputs: tuple[str, ...]
    kind: Kind = "cnn"
    description: str = ""
    encoder: EncoderName = "convnet"
    channels: tuple[int, ...] = (8, 16, 32)
    strides: tuple[int, ...] = (3, 2, 2)
    pet_encoder: PetEncoderName = "count"
    thresholds: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
    kernel_size: int = 3
    norm: str | None = "batch"
    pooling: Pooling = "logavgmax"
    dropout_prob: float | None = None
    head: tuple[int, ...] = (32, 16)
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    ct_init: Path | None = None
    ct_init_prefix: str | None = None
    n_estimators: int = 500
    min_samples_leaf: int = 2
    max_features: str | None = "sqrt"

    def __post_init__(self) -> None:
        """Refuse a declaration that cannot work, naming every problem at once.

        Raises
        ------
        ModelError
            ``model '<name>': <problem>``, or a numbered list of every problem (:func:`spec_problems`).
        """
        problems = spec_problems(self)
        if problems:
            where = f"model {self.name!r}"
            message = problems_message(problems, where)
            raise ModelError(f"{where}: {message}" if len(problems) == 1 else message)

    @property
    def ordered_inputs(self) -> tuple[str, ...]:
        """Inputs in :data:`INPUT_ORDER` (the order :meth:`FusionNet.forward` expects)."""
        return tuple(m for m in INPUT_ORDER if m in self.inputs)

    @property
    def image_inputs(self) -> tuple[str, ...]:
        return tuple(m for m in IMAGE_INPUTS if m in self.inputs)

    @property
    def uses_labs(self) -> bool:
        return "labs" in self.inputs

    @property
    def pretrained(self) -> bool:
        """True when the CT branch starts from a checkpoint."""
        return self.ct_init is not None

    @property
    def uses_pretrain_ct(self) -> bool:
        """True for route 1 (``ct_init: pretrain-ct``) before :func:`resolve_ct_init`."""
        return self.ct_init is not None and str(self.ct_init) == PRETRAIN_CT

    @property
    def ct_init_note(self) -> str:
        """Plain statement of where the CT branch's weights start (empty for models without CT)."""
        if "ct" not in self.inputs or self.kind != "cnn":
            return ""
        if self.ct_init is None:
            return "CT branch NOT pretrained: no checkpoint is configured (ct_init is empty), so it is trained from scratch."
        if self.uses_pretrain_ct:
            return ("CT branch initialised from the anatomy-pretrained checkpoint that `prrt pretrain-ct` writes "
                    "(WORK/pretrained/ct_encoder.pt; no outcome used) and fine-tuned.")
        if Path(self.ct_init).name == "ct_encoder.pt" and Path(self.ct_init).parent.name == "pretrained":
            return ("CT branch initialised from the anatomy-pretrained checkpoint of `prrt pretrain-ct` "
                    "(pretrained/ct_encoder.pt in the work folder; no outcome used) and fine-tuned.")
        return f"CT branch initialised from the checkpoint {Path(self.ct_init).name} (given by path) and fine-tuned."


def _input_problems(spec: ModelSpec) -> list[str]:
    """``name`` a plain key; ``inputs`` a non-empty list of distinct names out of :data:`INPUT_ORDER`."""
    out = []
    if not isinstance(spec.name, str) or not spec.name.replace("_", "").replace("-", "").isalnum():
        out.append("name must be letters, digits, '_' or '-'")
    if isinstance(spec.inputs, str) or not spec.inputs:
        return [*out, f"inputs must be a non-empty list out of {INPUT_ORDER}, got {spec.inputs!r}"]
    if set(spec.inputs) - set(INPUT_ORDER) or len(set(spec.inputs)) != len(spec.inputs):
        out.append(f"inputs {spec.inputs} must be distinct names out of {INPUT_ORDER}")
    return out


def _kind_problems(spec: ModelSpec) -> list[str]:
    """Inputs each kind takes: a random forest the labs only; a logistic model not the CT; a cnn an image."""
    inputs = () if isinstance(spec.inputs, str) else tuple(spec.inputs or ())
    if spec.kind == "random_forest" and inputs != ("labs",):
        return [f"a random_forest takes inputs ['labs'] only, got {list(inputs)}"]
    if spec.kind == "logistic" and "ct" in inputs:
        return ["a logistic model takes 'labs' and/or 'pet' (its radiomics features), not 'ct'"]
    if spec.kind == "cnn" and not any(m in IMAGE_INPUTS for m in inputs):
        return ["a cnn needs 'pet' and/or 'ct' among its inputs"]
    return []


def _cnn_problems(spec: ModelSpec) -> list[str]:
    """A cnn's architecture: matching ``channels``/``strides``, ``count`` thresholds above 0.5, two head widths."""
    if spec.kind != "cnn":
        return []
    out = []
    if len(spec.channels) != len(spec.strides) or not spec.channels:
        out.append(f"channels {spec.channels} and strides {spec.strides} need equal, non-zero length")
    if spec.pet_encoder == "count" and (not spec.thresholds or min(spec.thresholds) <= 0.5):
        out.append(f"thresholds must be non-empty multiples of the liver above 0.5, got {spec.thresholds}")
    if len(spec.head) != 2:
        out.append(f"head lists the 2 hidden widths of the 3-layer MLP, got {spec.head}")
    return out


def _shared_problems(spec: ModelSpec) -> list[str]:
    """``dropout_prob`` in [0, 1); ``ct_init`` only with a CT input; SegResNet levels with >= 1 block."""
    out = []
    dropout = spec.dropout_prob
    if isinstance(dropout, int | float) and not 0.0 <= dropout < 1.0:
        out.append(f"dropout_prob must lie in [0, 1), got {dropout}")
    if spec.ct_init is not None and "ct" not in (spec.inputs or ()):
        out.append("ct_init is set but the model has no CT input")
    if spec.encoder == "segresnet" and (not spec.blocks_down or min(spec.blocks_down) < 1):
        out.append(f"blocks_down must list >= 1 block per level, got {spec.blocks_down}")
    return out


def spec_problems(spec: ModelSpec) -> list[str]:
    """Every reason a model declaration cannot work, one line each (empty: it can).

    Field types and the choices of ``kind``, ``encoder``, ``pet_encoder`` and ``pooling`` come from the
    annotations (:func:`prrt_utils.io.config.field_problems`); then inputs, kind, cnn architecture and the
    fields every kind shares. The Random Forest fields (``n_estimators``, ``min_samples_leaf``,
    ``max_features``) are checked for type here and by scikit-learn when the forest is built.
    """
    return [*field_problems(spec), *_input_problems(spec), *_kind_problems(spec), *_cnn_problems(spec),
            *_shared_problems(spec)]


def models_dir() -> Path:
    """The repository's ``models/`` folder (beside the package), else ``./models``."""
    here = Path(__file__).resolve().parents[2] / "models"
    return here if here.is_dir() else Path("models")


def load_registry(directory: str | Path | None = None) -> dict[str, ModelSpec]:
    """Read every ``<key>.yaml`` under ``directory`` (default :func:`models_dir`).

    Returns
    -------
    dict
        ``key -> ModelSpec``, the paper's seven first in Table 2 order, then any
        others alphabetically.
    """
    directory = Path(directory) if directory is not None else models_dir()
    if not directory.is_dir():
        raise ModelError(f"model folder {directory} does not exist")
    specs: dict[str, ModelSpec] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            spec = ModelSpec.from_yaml(path)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{path}: {exc}") from exc
        if spec.name != path.stem:
            raise ModelError(f"{path}: name {spec.name!r} must equal the file name {path.stem!r}")
        specs[spec.name] = spec
    order = [k for k in PAPER_MODEL_KEYS if k in specs] + sorted(k for k in specs if k not in PAPER_MODEL_KEYS)
    return {k: specs[k] for k in order}


def get_spec(model: str | ModelSpec, directory: str | Path | None = None) -> ModelSpec:
    """A :class:`ModelSpec` given itself or its key in the registry."""
    if isinstance(model, ModelSpec):
        return model
    registry = load_registry(directory)
    if model not in registry:
        raise ModelError(f"unknown model {model!r}; known: {list(registry)}")
    return registry[model]


def override_ct_init(spec: ModelSpec, ct_init: str) -> ModelSpec:
    """``spec`` with its CT start overridden for one run: ``""`` as declared, ``"none"`` from scratch, else a path.

    Only models that declare a pretrained CT branch are changed (the book's and
    ``prrt run``'s ``--ct-init`` option).
    """
    if not ct_init or not spec.pretrained:
        return spec
    return spec.replace(ct_init=None if ct_init == "none" else Path(ct_init))


def resolve_ct_init(spec: ModelSpec, work_dir: str | Path) -> ModelSpec:
    """``spec`` with ``ct_init: pretrain-ct`` replaced by that work folder's checkpoint path.

    Raises :class:`ModelError` when the checkpoint has not been made yet.
    """
    if not spec.uses_pretrain_ct:
        return spec
    path = pretrained_ct_path(work_dir).resolve()
    if not path.is_file():
        raise ModelError(
            f"model {spec.name!r} starts its CT branch from the anatomy-pretrained checkpoint, which does not "
            f"exist yet ({path}). Run `prrt pretrain-ct --work {work_dir}` first (make book does), or set ct_init "
            "to null (from scratch) or to a checkpoint path."
        )
    return spec.replace(ct_init=path)


# --------------------------------------------------------------------------- networks


class ConvEncoder(nn.Module):
    """Small 3D CNN image encoder of MONAI blocks (paper 2.5: one branch per image).

    Parameters
    ----------
    spatial_dims : int
        3 for volumes.
    in_channels : int
        Image channels (1: one PET or one CT volume).
    channels, strides, kernel_size, norm
        As in :class:`ModelSpec`; block ``i`` is
        ``Convolution(in, channels[i], strides=strides[i])`` with ReLU.
    dropout_prob : float
        Dropout after each block (MONAI ``dropout``).
    pooling : {"logavgmax", "avgmax", "avg", "max", "flatten"}
        Global ``log(mean + 1e-4)`` + max, average + max (concatenated),
        average, max, or flatten. The log of the mean is what makes a volume
        count learnable: a tumour of 50 voxels in 187,500 gives a mean of
        about 3e-4 whose relative changes (twice the burden: twice the mean)
        the log turns into steps of the same size as any other feature.
    img_size : tuple of int
        ``(D, H, W)`` of the input; needed only for ``pooling="flatten"``.

    Input ``(B, in_channels, D, H, W)``, output ``(B, out_features)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32),
        strides: Sequence[int] = (3, 2, 2),
        kernel_size: int = 3,
        norm: str | None = "batch",
        dropout_prob: float = 0.1,
        pooling: str = "logavgmax",
        img_size: Sequence[int] = IMG_SIZE,
    ) -> None:
        super().__init__()
        # imported here: importing MONAI would cost every page that only reads results 2 s
        from monai.networks.blocks import Convolution

        if pooling not in POOLINGS:
            raise ModelError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        blocks, c_in = [], in_channels
        for c_out, s in zip(channels, strides, strict=True):
            blocks.append(
                Convolution(
                    spatial_dims,
                    c_in,
                    c_out,
                    strides=s,
                    kernel_size=kernel_size,
                    act="relu",
                    norm=norm,
                    dropout=dropout_prob or None,
                )
            )
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.pooling = pooling
        if pooling == "flatten":
            with torch.no_grad():
                was = self.features.training
                self.features.eval()
                shape = self.features(torch.zeros(1, in_channels, *img_size)).shape
                self.features.train(was)
            self.out_features = int(torch.tensor(shape[1:]).prod())
        else:
            self.out_features = c_in * (2 if pooling in ("avgmax", "logavgmax") else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.pooling == "flatten":
            return f.flatten(1)
        dims = tuple(range(2, f.ndim))
        if self.pooling == "logavgmax":
            return torch.cat([torch.log(f.mean(dims) + LOG_POOL_EPS), f.amax(dims)], dim=1)
        if self.pooling == "avg":
            return f.mean(dims)
        if self.pooling == "max":
            return f.amax(dims)
        return torch.cat([f.mean(dims), f.amax(dims)], dim=1)


class UptakeCountEncoder(nn.Module):
    """PET branch that counts uptake above learned thresholds: ``(B, 1, D, H, W) -> (B, 2K)``.

    Channel ``k`` is ``relu(w_k x + b_k)`` per voxel, initialised as
    ``relu(x - log1p(t_k))``; with ``x`` the ``log1p`` of PET in multiples of
    the liver (:class:`prrt_utils.models.inputs.FoldNormaliser`) it is zero below
    ``t_k`` times the liver. The embedding is, per channel, the log of its
    global mean (``log(mean + 1e-4)``: how much tissue lies above the
    threshold, the tumour burden at ``t_k``) and its maximum (the hottest
    lesion). Training moves ``w`` and ``b``. This is a 1x1x1 convolution with
    global pooling, the minimal network that can count hot voxels; a stride-3
    first convolution averages a lesion of one or two voxels with its
    surroundings before any threshold, and a plain global mean divides it by
    187,500 voxels (issue 14).

    Written by hand for speed: only voxels above ``floor`` (half the liver)
    enter the computation, a few per cent of a whole-body volume. Measured on
    the CPU, forward and backward of a batch of 16: 0.047 s, against 0.52 s
    for the dense broadcast form and 0.92 s for ``conv3d`` with a 1x1x1 kernel. Voxels below the
    floor would contribute only while a learned threshold fell below half the
    liver; they are treated as zero (a stated property of the network, not an
    approximation that changes with the data). Gradients reach every voxel
    above the floor, so saliency maps work as for any network.

    Parameters
    ----------
    thresholds : sequence of float
        Initial thresholds ``t_k`` in multiples of the liver reference.
    floor : float
        Voxels at or below ``floor`` times the liver are not computed.
    """

    def __init__(self, thresholds: Sequence[float], floor: float = 0.5) -> None:
        super().__init__()
        t = torch.log1p(torch.as_tensor([float(v) for v in thresholds], dtype=torch.float32))
        self.weight = nn.Parameter(torch.ones(len(t)))
        self.bias = nn.Parameter(-t)
        self.floor = math.log1p(floor)
        self.out_features = 2 * len(t)
        # the log-means lie near log(1e-4) = -9.2 and the maxima near 1-3: batch norm puts both on the unit
        # scale that the head's initialisation assumes (running statistics in evaluation)
        self.norm = nn.BatchNorm1d(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        b, n = flat.shape
        keep = flat > self.floor
        rows = keep.nonzero(as_tuple=True)[0]
        act = torch.relu(flat[keep].unsqueeze(1) * self.weight + self.bias)  # (M, K)
        total = torch.zeros(b, act.shape[1], dtype=act.dtype, device=act.device).index_add(0, rows, act)
        peak = torch.zeros_like(total).scatter_reduce(0, rows.unsqueeze(1).expand_as(act), act, "amax",
                                                      include_self=True)
        return self.norm(torch.cat([torch.log(total / n + LOG_POOL_EPS), peak], dim=1))


class Resnet10Encoder(nn.Module):
    """MONAI's ``resnet10`` (MedicalNet family) without its classifier: ``(B, 1, D, H, W) -> (B, 512)``."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import resnet10

        self.net = resnet10(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=1, feed_forward=False)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SegResNetEncoder(nn.Module):
    """The encoder half of MONAI's ``SegResNet`` (``convInit`` and ``down_layers``), globally pooled.

    Its tensor names are those of a whole ``SegResNet``, so the weights of a
    SegResNet CT segmentation bundle load by name (:func:`load_encoder_checkpoint`);
    the decoder's tensors in such a checkpoint are reported as unused.
    ``(B, 1, D, H, W) -> (B, 2 * init_filters * 2 ** (levels - 1))`` (average and max pooling).
    """

    def __init__(self, init_filters: int = 8, blocks_down: Sequence[int] = (1, 2, 2, 4), norm: Any = None,
                 in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import SegResNet

        net = SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=2, init_filters=init_filters,
                        blocks_down=tuple(blocks_down), blocks_up=(1,) * (len(blocks_down) - 1),
                        norm=norm or ("GROUP", {"num_groups": min(8, init_filters)}))
        self.convInit = net.convInit
        self.down_layers = net.down_layers
        self.out_features = 2 * init_filters * 2 ** (len(blocks_down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convInit(x)
        for down in self.down_layers:
            x = down(x)
        return torch.cat([x.mean((2, 3, 4)), x.amax((2, 3, 4))], dim=1)


class FusionHead(nn.Module):
    """The paper's 3-layer MLP on the embedding, plus a direct linear path for the laboratory values.

    ``logit = MLP(embedding) + w . labs`` where ``labs`` are the last
    ``n_labs`` columns of the embedding (standardised log-labs). Why the
    direct path: with about 77 training patients the MLP must learn the labs'
    largely linear effect through two hidden layers and dropout, beside many
    image features; the linear path gives the fusion models at least what a
    logistic regression on the labs learns, and the MLP adds what the image
    contributes (issue 14). Input ``(B, E)``, output ``(B, 1)``.
    """

    def __init__(self, embedding_dim: int, n_labs: int, widths: Sequence[int], dropout_prob: float) -> None:
        super().__init__()
        h1, h2 = widths
        self.n_labs = n_labs
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, h1),
            nn.ReLU(),
            nn.Dropout(dropout_prob),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Dropout(dropout_prob),
            nn.Linear(h2, 1),
        )
        self.labs = nn.Linear(n_labs, 1, bias=False) if n_labs else None

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        out = self.mlp(embedding)
        if self.labs is not None:
            out = out + self.labs(embedding[:, embedding.shape[1] - self.n_labs:])
        return out


class FusionNet(nn.Module):
    """Image branch(es), optional labs, 3-layer MLP head -> one logit (paper 2.5, Figure 1).

    Parameters
    ----------
    spec : ModelSpec
        A ``kind="cnn"`` declaration.
    n_labs : int
        Number of laboratory features (4: AST, ALT, CgA, GGT).
    img_size : tuple of int
        ``(D, H, W)`` of the volumes.
    dropout_prob : float
        Dropout used when ``spec.dropout_prob`` is ``None``.

    Notes
    -----
    :meth:`forward` takes one tensor per input in :data:`INPUT_ORDER` order,
    restricted to the model's inputs: PET ``(B, 1, D, H, W)``, CT
    ``(B, 1, D, H, W)``, labs ``(B, n_labs)`` (standardised). It returns the
    logits ``(B,)`` of short PFS, so that captum's attribution methods can call
    it with a tuple of inputs.
    """

    def __init__(self, spec: ModelSpec, n_labs: int = len(LAB_COLUMNS), img_size: Sequence[int] = IMG_SIZE,
                 dropout_prob: float = 0.1) -> None:
        super().__init__()
        if spec.kind != "cnn":
            raise ModelError(f"model {spec.name!r}: FusionNet builds CNN models, not {spec.kind!r}")
        p = spec.dropout_prob if spec.dropout_prob is not None else dropout_prob
        self.inputs = spec.ordered_inputs
        self.n_labs = n_labs if spec.uses_labs else 0
        encoders: dict[str, nn.Module] = {}
        for modality in spec.image_inputs:
            if modality == "pet" and spec.pet_encoder == "count":
                encoders[modality] = UptakeCountEncoder(spec.thresholds)
            elif spec.encoder == "resnet10":
                encoders[modality] = Resnet10Encoder(3, 1)
            elif spec.encoder == "segresnet":
                norm = None if spec.norm in (None, "group") else spec.norm  # None: SegResNet's group norm
                encoders[modality] = SegResNetEncoder(spec.channels[0], spec.blocks_down, norm)
            else:
                encoders[modality] = ConvEncoder(
                    3, 1, spec.channels, spec.strides, spec.kernel_size, spec.norm, p, spec.pooling, img_size
                )
        self.encoders = nn.ModuleDict(encoders)
        self.embedding_dim = sum(e.out_features for e in encoders.values()) + self.n_labs
        self.head = FusionHead(self.embedding_dim, self.n_labs, spec.head, p)

    def embed(self, *xs: torch.Tensor) -> torch.Tensor:
        """The head's input ``(B, E)``: image embeddings then standardised labs, concatenated."""
        if len(xs) != len(self.inputs):
            raise ModelError(f"FusionNet expects {len(self.inputs)} tensors {self.inputs}, got {len(xs)}")
        parts = []
        for name, x in zip(self.inputs, xs, strict=True):
            parts.append(self.encoders[name](x) if name in self.encoders else x)
        return torch.cat(parts, dim=1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(*xs)).squeeze(1)


def build_network(spec: ModelSpec, n_labs: int = len(LAB_COLUMNS), img_size: Sequence[int] = IMG_SIZE,
                  dropout_prob: float = 0.1) -> FusionNet:
    """The :class:`FusionNet` of ``spec`` with the CT branch loaded from ``spec.ct_init`` if set.

    What was loaded is kept in ``net.ct_load_report`` (a :class:`LoadReport`, or ``None``).
    """
    net = FusionNet(spec, n_labs=n_labs, img_size=img_size, dropout_prob=dropout_prob)
    net.ct_load_report = None
    if spec.ct_init is not None:
        if spec.uses_pretrain_ct:
            raise ModelError(f"model {spec.name!r}: ct_init 'pretrain-ct' must be resolved to a work folder's "
                             "checkpoint first (models.resolve_ct_init)")
        net.ct_load_report = load_encoder_checkpoint(net.encoders["ct"], spec.ct_init, model=spec.name,
                                                     prefix=spec.ct_init_prefix)
    return net


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_encoder_checkpoint` took from a checkpoint.

    Attributes
    ----------
    file, sha256 : str
        The checkpoint's file name (not its folder) and content hash.
    prefix : str
        Prefix under which the encoder's tensors were found (``""``: none).
    loaded : tuple of str
        Encoder tensors taken from the checkpoint.
    not_loaded : tuple of str
        Encoder tensors the checkpoint does not have: they keep their random
        initialisation and are trained from scratch.
    unused : int
        Checkpoint tensors that are not part of the encoder (e.g. a segmentation decoder).
    """

    file: str
    sha256: str
    prefix: str
    loaded: tuple[str, ...]
    not_loaded: tuple[str, ...]
    unused: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        n = len(self.loaded) + len(self.not_loaded)
        text = (f"{self.file}: loaded {len(self.loaded)} of {n} CT-encoder tensors"
                f"{f' (prefix {self.prefix!r})' if self.prefix else ''}; {self.unused} checkpoint tensor(s) unused")
        if self.not_loaded:
            text += f"; NOT loaded (trained from scratch): {', '.join(self.not_loaded[:6])}"
            text += f" and {len(self.not_loaded) - 6} more" if len(self.not_loaded) > 6 else ""
        return text


def _state_dict_of(blob: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict", "network"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
            break
    if not isinstance(blob, dict) or not any(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ModelError(f"{where}{path.name} holds no state_dict (a dict of tensors, or one under 'state_dict')")
    return {str(k): v for k, v in blob.items() if isinstance(v, torch.Tensor)}


def _find_prefix(own: Sequence[str], theirs: Sequence[str]) -> str:
    """The prefix ``p`` for which most encoder names ``n`` exist as ``p + n`` in the checkpoint."""
    counts: dict[str, int] = {}
    own_set = set(own)
    for key in theirs:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in own_set:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return ""
    return max(sorted(counts, key=len), key=lambda p: counts[p])


def load_encoder_checkpoint(encoder: nn.Module, path: str | Path, model: str = "",
                            prefix: str | None = None) -> LoadReport:
    """Load a pretrained image encoder's weights by name; report what was and was not loaded.

    The checkpoint is a file written with :func:`torch.save` holding a
    ``state_dict`` (plain, as in a MONAI bundle's ``models/model.pt``, or under
    ``"state_dict"``/``"model"``). The encoder's tensors are looked up under a
    prefix (``prefix``, or the one under which most of them are found, e.g.
    ``"encoders.ct."`` of a whole :class:`FusionNet` or ``"encoder."`` of
    :class:`prrt_utils.models.pretrain.AnatomySegNet`).

    Partial checkpoints load: the tensors they lack keep their initialisation
    and are listed in :attr:`LoadReport.not_loaded`. It stops with
    :class:`ModelError` when a tensor of the same name has another shape (the
    architectures differ: the message lists them) or when nothing matches.
    """
    path = Path(path)
    where = f"model {model!r}: " if model else ""
    if not path.is_file():
        raise ModelError(
            f"{where}ct_init checkpoint {path} does not exist. Produce it (prrt pretrain-ct) or set ct_init to "
            "null, in which case the CT branch is trained from scratch and the book says so."
        )
    try:
        blob: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ModelError(f"{where}{path.name} cannot be read as a torch checkpoint ({type(exc).__name__}); "
                         "TorchScript (.ts) and pickled whole models are not accepted, only state_dicts") from None
    state = _state_dict_of(blob, path, where)
    own = encoder.state_dict()
    names = [k for k in own if not k.endswith("num_batches_tracked")]
    if prefix is None:
        prefix = _find_prefix(list(own), list(state))
    matched = {k: state[prefix + k] for k in own if prefix + k in state}
    if not any(k in matched for k in names):
        raise ModelError(
            f"{where}no tensor of {path.name} matches the CT encoder by name. The encoder expects e.g. "
            f"{names[:2]}; the checkpoint has e.g. {list(state)[:3]}. Declare the encoder the checkpoint was "
            "made with (encoder, channels, blocks_down) or set ct_init_prefix."
        )
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
             for k, v in matched.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ModelError(
            f"{where}{path.name} does not fit the CT encoder: {len(wrong)} tensor(s) have another shape, e.g. "
            f"{'; '.join(wrong[:3])}. The checkpoint was made with other channels or kernel sizes: declare the "
            "model with the checkpoint's architecture."
        )
    own.update(matched)
    encoder.load_state_dict(own)
    used = {prefix + k for k in matched}
    return LoadReport(
        file=path.name,
        sha256=store.sha256_file(path),
        prefix=prefix,
        loaded=tuple(k for k in names if k in matched),
        not_loaded=tuple(k for k in names if k not in matched),
        unused=sum(1 for k in state if k not in used),
    )


def make_logistic(spec: ModelSpec) -> Any:
    """Standardisation + L2 logistic regression (scikit-learn, C = 1, fixed a priori) of a ``logistic`` spec."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if spec.kind != "logistic":
        raise ModelError(f"model {spec.name!r} is a {spec.kind}, not a logistic model")
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def make_forest(spec: ModelSpec, seed: int) -> Any:
    """The Random Forest of ``spec`` (scikit-learn; ``n_jobs=1``: parallelism is over folds)."""
    from sklearn.ensemble import RandomForestClassifier

    if spec.kind != "random_forest":
        raise ModelError(f"model {spec.name!r} is a {spec.kind}, not a random_forest")
    return RandomForestClassifier(
        n_estimators=spec.n_estimators,
        min_samples_leaf=spec.min_samples_leaf,
        max_features=spec.max_features,
        random_state=seed,
        n_jobs=1,
    )
