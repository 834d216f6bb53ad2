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
* Embedding: the paper flattens the encoder output. We pool globally by
  default (``pooling="avgmax"``: global average and global max pooling,
  concatenated) and keep ``"flatten"`` as an option. Why: with about 77
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
``ct_init`` names a checkpoint (a ``state_dict`` of the CT encoder, see
:func:`load_encoder_checkpoint`). When it is ``None`` the CT branch is
trained from scratch and :attr:`ModelSpec.ct_init_note` says so in plain
words; the book prints that note. A path that does not exist is an error,
never a silent fallback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import nn

from prrt_utils.cohort import LAB_COLUMNS  # the cohort stage owns the list of lab inputs
from prrt_utils.config import Config
from prrt_utils.paper import MODEL_KEYS

__all__ = [
    "IMAGE_INPUTS",
    "IMG_SIZE",
    "INPUT_ORDER",
    "LAB_COLUMNS",
    "PAPER_MODEL_KEYS",
    "ConvEncoder",
    "FusionNet",
    "ModelError",
    "ModelSpec",
    "Resnet10Encoder",
    "build_network",
    "get_spec",
    "load_encoder_checkpoint",
    "load_registry",
    "make_forest",
    "models_dir",
]

INPUT_ORDER: tuple[str, ...] = ("pet", "ct", "labs")
"""Canonical order of inputs: :meth:`FusionNet.forward` takes its tensors in this order."""

IMAGE_INPUTS: tuple[str, ...] = ("pet", "ct")

IMG_SIZE: tuple[int, int, int] = (75, 50, 50)
"""``(D, H, W)`` of the preprocessed volumes (paper 2.5; DESIGN "Preprocessed volumes")."""

PAPER_MODEL_KEYS: tuple[str, ...] = MODEL_KEYS
"""The seven models of the paper in the order of its Table 2 (from :mod:`prrt_utils.paper`)."""

KINDS = ("random_forest", "cnn")
ENCODERS = ("convnet", "resnet10")
POOLINGS = ("avgmax", "avg", "max", "flatten")


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
    kind : {"cnn", "random_forest"}
        A Random Forest takes ``("labs",)`` only.
    description : str
        One line for the book.
    encoder : {"convnet", "resnet10"}
        Image encoder: the project's small MONAI CNN, or MONAI's ``resnet10``.
    channels : tuple of int
        Output channels of the encoder's convolution blocks.
    strides : tuple of int
        Stride of each block (same length as ``channels``); the first is the stem.
    kernel_size : int
        Convolution kernel size of every block.
    norm : str or None
        MONAI norm name (``"batch"``, ``"instance"``) or ``None``.
    pooling : {"avgmax", "avg", "max", "flatten"}
        How the encoder output becomes a vector (module docstring says why
        ``avgmax`` is the default and ``flatten`` the paper's).
    dropout_prob : float or None
        Dropout in encoder and head; ``None`` takes :attr:`TrainConfig.dropout`
        (0.1, the paper's).
    head : tuple of int
        Widths of the two hidden layers of the 3-layer MLP head (the third
        layer has one output, the logit of short PFS).
    ct_init : Path or None
        Checkpoint of the CT encoder (``state_dict``); ``None`` = not pretrained.
    n_estimators, min_samples_leaf, max_features
        Random Forest hyper-parameters (scikit-learn names).
    """

    name: str
    inputs: tuple[str, ...]
    kind: str = "cnn"
    description: str = ""
    encoder: str = "convnet"
    channels: tuple[int, ...] = (8, 16, 32)
    strides: tuple[int, ...] = (3, 2, 2)
    kernel_size: int = 3
    norm: str | None = "batch"
    pooling: str = "avgmax"
    dropout_prob: float | None = None
    head: tuple[int, ...] = (32, 16)
    ct_init: Path | None = None
    n_estimators: int = 500
    min_samples_leaf: int = 2
    max_features: str | None = "sqrt"

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ModelError(f"{where}: name must be letters, digits, '_' or '-'")
        if isinstance(self.inputs, str) or not self.inputs:
            raise ModelError(f"{where}: inputs must be a non-empty list out of {INPUT_ORDER}, got {self.inputs!r}")
        unknown = set(self.inputs) - set(INPUT_ORDER)
        if unknown or len(set(self.inputs)) != len(self.inputs):
            raise ModelError(f"{where}: inputs {self.inputs} must be distinct names out of {INPUT_ORDER}")
        if self.kind not in KINDS:
            raise ModelError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "random_forest" and tuple(self.inputs) != ("labs",):
            raise ModelError(f"{where}: a random_forest takes inputs ['labs'] only, got {list(self.inputs)}")
        if self.kind == "cnn":
            if not self.image_inputs:
                raise ModelError(f"{where}: a cnn needs 'pet' and/or 'ct' among its inputs")
            if self.encoder not in ENCODERS:
                raise ModelError(f"{where}: encoder must be one of {ENCODERS}, got {self.encoder!r}")
            if len(self.channels) != len(self.strides) or not self.channels:
                raise ModelError(f"{where}: channels {self.channels} and strides {self.strides} need equal, non-zero length")
            if self.pooling not in POOLINGS:
                raise ModelError(f"{where}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
            if len(self.head) != 2:
                raise ModelError(f"{where}: head lists the 2 hidden widths of the 3-layer MLP, got {self.head}")
        if self.dropout_prob is not None and not 0.0 <= self.dropout_prob < 1.0:
            raise ModelError(f"{where}: dropout_prob must lie in [0, 1), got {self.dropout_prob}")
        if self.ct_init is not None and "ct" not in self.inputs:
            raise ModelError(f"{where}: ct_init is set but the model has no CT input")

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
    def ct_init_note(self) -> str:
        """Plain statement of where the CT branch's weights start (empty for models without CT)."""
        if "ct" not in self.inputs or self.kind != "cnn":
            return ""
        if self.ct_init is None:
            return "CT branch NOT pretrained: no checkpoint is configured (ct_init is empty), so it is trained from scratch."
        return f"CT branch initialised from the checkpoint {self.ct_init} and fine-tuned."


def models_dir() -> Path:
    """The repository's ``models/`` folder (beside the package), else ``./models``."""
    here = Path(__file__).resolve().parents[1] / "models"
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
    pooling : {"avgmax", "avg", "max", "flatten"}
        Global average + max (concatenated), average, max, or flatten.
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
        pooling: str = "avgmax",
        img_size: Sequence[int] = IMG_SIZE,
    ) -> None:
        super().__init__()
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
            self.out_features = c_in * (2 if pooling == "avgmax" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.pooling == "flatten":
            return f.flatten(1)
        dims = tuple(range(2, f.ndim))
        if self.pooling == "avg":
            return f.mean(dims)
        if self.pooling == "max":
            return f.amax(dims)
        return torch.cat([f.mean(dims), f.amax(dims)], dim=1)


class Resnet10Encoder(nn.Module):
    """MONAI's ``resnet10`` (MedicalNet family) without its classifier: ``(B, 1, D, H, W) -> (B, 512)``."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import resnet10

        self.net = resnet10(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=1, feed_forward=False)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
            if spec.encoder == "resnet10":
                encoders[modality] = Resnet10Encoder(3, 1)
            else:
                encoders[modality] = ConvEncoder(
                    3, 1, spec.channels, spec.strides, spec.kernel_size, spec.norm, p, spec.pooling, img_size
                )
        self.encoders = nn.ModuleDict(encoders)
        self.embedding_dim = sum(e.out_features for e in encoders.values()) + self.n_labs
        h1, h2 = spec.head
        self.head = nn.Sequential(
            nn.Linear(self.embedding_dim, h1),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(h2, 1),
        )

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
    """The :class:`FusionNet` of ``spec`` with the CT branch loaded from ``spec.ct_init`` if set."""
    net = FusionNet(spec, n_labs=n_labs, img_size=img_size, dropout_prob=dropout_prob)
    if spec.ct_init is not None:
        load_encoder_checkpoint(net.encoders["ct"], spec.ct_init, model=spec.name)
    return net


def load_encoder_checkpoint(encoder: nn.Module, path: str | Path, model: str = "") -> list[str]:
    """Load a pretrained image encoder's weights (paper 2.5: pretrained CT branch).

    The checkpoint is a file written with :func:`torch.save` holding either the
    encoder's ``state_dict`` or a dict with a ``"state_dict"`` entry; keys may
    carry a prefix (``"encoders.ct."``, ``"encoder."``, ``"module."``), which is
    stripped. Every tensor whose name and shape match is loaded; at least one
    must, and every encoder parameter that is not loaded is listed in the error.

    Returns
    -------
    list of str
        Names of the loaded parameters.
    """
    path = Path(path)
    where = f"model {model!r}: " if model else ""
    if not path.is_file():
        raise ModelError(
            f"{where}ct_init checkpoint {path} does not exist. Produce it (CT pretraining) or set ct_init to "
            "null, in which case the CT branch is trained from scratch and the book says so."
        )
    blob: Any = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{where}{path} holds no state_dict")
    own = encoder.state_dict()
    matched = {}
    for key, value in state.items():
        for prefix in ("", "encoders.ct.", "encoder.", "module.", "ct_encoder."):
            k = key[len(prefix):] if key.startswith(prefix) else None
            if k is not None and k in own and tuple(own[k].shape) == tuple(value.shape):
                matched[k] = value
                break
    if not matched:
        raise ModelError(f"{where}no tensor of {path} matches the CT encoder (names or shapes differ)")
    missing = sorted(k for k in own if k not in matched and not k.endswith("num_batches_tracked"))
    if missing:
        raise ModelError(f"{where}{path} lacks {len(missing)} CT-encoder tensor(s), e.g. {missing[:3]}")
    own.update(matched)
    encoder.load_state_dict(own)
    return sorted(matched)


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
