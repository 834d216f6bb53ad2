"""Organ masks, the liver reference and the PET radiomics features: known answers on hand-built volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prrt_utils.data.anatomy import (
    ORGAN_CODES,
    SYNTHETIC_LABEL_MAP,
    AnatomyError,
    label_lookup,
    liver_reference,
    organs_on_grid,
    pet_relative,
)
from prrt_utils.models.networks import UptakeCountEncoder
from prrt_utils.models.radiomics import FEATURES, RadiomicsError, radiomics_features, radiomics_table

LIVER, SPLEEN = ORGAN_CODES["liver"], ORGAN_CODES["spleen"]


def _patient():
    """Background SUV 1, a liver block of SUV 8 with a 2x2x2 metastasis of SUV 24 inside it,
    a spleen of SUV 30 and one nodal lesion voxel of SUV 16 elsewhere."""
    pet = np.ones((12, 10, 10), np.float32)
    organs = np.zeros(pet.shape, np.uint8)
    organs[2:8, 2:8, 2:8] = LIVER
    pet[2:8, 2:8, 2:8] = 8.0
    pet[4:6, 4:6, 4:6] = 24.0
    organs[4:6, 4:6, 4:6] = 0  # a label map marks the metastasis as lesion, not liver: a hole in the mask
    organs[9:11, 1:3, 1:3] = SPLEEN  # the nodal voxel below lies more than one voxel away
    pet[9:11, 1:3, 1:3] = 30.0
    pet[10, 7, 7] = 16.0
    return pet, organs


def test_the_liver_reference_is_the_median_liver_suv_whatever_the_metastases():
    pet, organs = _patient()
    assert liver_reference(pet, organs) == 8.0
    assert liver_reference(pet, np.zeros_like(organs)) is None  # no liver: no reference, never a guess


def test_pet_relative_is_multiples_of_the_liver_with_physiological_organs_zeroed():
    pet, organs = _patient()
    rel = pet_relative(pet[None, None], organs[None, None])[0, 0]
    assert rel[3, 3, 3] == 1.0 and rel[4, 4, 4] == 3.0 and rel[10, 7, 7] == 2.0
    assert rel[0, 0, 0] == pytest.approx(1 / 8)
    assert (rel[organs == SPLEEN] == 0).all()
    assert rel[8, 1, 1] == 0 and rel[9, 3, 2] == 0  # the voxel around the spleen, where its uptake spills
    with pytest.raises(AnatomyError, match="row 0"):
        pet_relative(pet[None, None], np.zeros_like(organs)[None, None])


def test_organs_on_grid_keep_only_the_four_organs_and_refuse_unlisted_codes():
    labels = np.array([[[0, 1, 3, 4, 5, 6, 11, 7]]], dtype=np.int32)  # body, liver, spleen, kidney, bladder, lesion, bone
    affine = np.eye(4)
    got = organs_on_grid(labels, affine, affine, labels.shape, label_lookup(SYNTHETIC_LABEL_MAP))
    assert got.tolist() == [[[0, 0, LIVER, SPLEEN, ORGAN_CODES["kidney"], ORGAN_CODES["bladder"], 0, 0]]]
    with pytest.raises(AnatomyError, match="patient P1.*99"):
        organs_on_grid(np.array([[[99]]]), affine, affine, (1, 1, 1), label_lookup(SYNTHETIC_LABEL_MAP), "P1")


def test_radiomics_features_count_the_tumour_above_the_liver_and_nothing_in_the_spleen():
    pet, organs = _patient()
    f = radiomics_features(pet, organs)
    # tumour: the 8 voxels of SUV 24 and the nodal voxel of SUV 16 (spleen of SUV 30 excluded)
    values = np.array([24.0] * 8 + [16.0])
    assert f["log_volume"] == pytest.approx(np.log1p(9))
    assert f["log_uptake"] == pytest.approx(np.log1p(values.sum()))
    assert f["suv_max"] == 24.0 and f["suv_mean"] == pytest.approx(values.mean())
    assert f["tumour_to_liver"] == pytest.approx(values.mean() / 8.0)
    assert f["hepatic_fraction"] == pytest.approx(8 / 9)  # the hole in the liver mask is filled
    assert f["heterogeneity"] == pytest.approx(values.std() / values.mean())
    table = radiomics_table(pet[None, None], organs[None, None], ["P1"])
    assert list(table.columns) == list(FEATURES) and table.loc["P1", "suv_max"] == 24.0
    with pytest.raises(RadiomicsError, match="organ masks"):
        radiomics_table(pet[None, None], None, ["P1"])


def test_the_uptake_count_encoder_equals_its_dense_definition_and_passes_gradients():
    torch.manual_seed(0)
    enc = UptakeCountEncoder((1.0, 2.0, 4.0)).eval()
    with torch.no_grad():
        enc.weight.copy_(torch.tensor([1.2, 0.8, 1.0]))
        enc.bias.copy_(torch.tensor([-0.5, -1.0, -1.6]))
    x = torch.log1p(torch.rand(2, 1, 6, 5, 4) * 6.0).requires_grad_(True)
    out = enc(x)
    # dense reference: every voxel above the floor, relu(w x + b), global mean and max
    flat = x.detach().flatten(1)
    keep = (flat > np.log1p(0.5)).unsqueeze(-1)
    act = torch.relu(flat.unsqueeze(-1) * enc.weight + enc.bias) * keep
    dense = torch.cat([torch.log(act.mean(1) + 1e-4), act.amax(1)], dim=1)
    ref = enc.norm(dense)
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_label_map_lookup_never_leaves_its_folder(tmp_path):
    from prrt_utils.data.anatomy import label_map_path
    from prrt_utils.io.store import UnsafePathError

    outside = tmp_path / "victim.nii.gz"
    outside.write_bytes(b"not a label map")
    (tmp_path / "labels").mkdir()
    with pytest.raises(UnsafePathError):
        label_map_path(tmp_path / "labels", "../victim")
    assert label_map_path(tmp_path, "victim") == outside
