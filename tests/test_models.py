"""Model declarations, registry and networks (prrt_utils.models)."""

from __future__ import annotations

import shutil

import pytest
import torch

from prrt_utils.models import (
    PAPER_MODEL_KEYS,
    ConvEncoder,
    FusionNet,
    ModelError,
    ModelSpec,
    Resnet10Encoder,
    build_network,
    load_registry,
    models_dir,
)

torch.set_num_threads(1)


def test_registry_holds_the_seven_paper_models_in_table_order():
    reg = load_registry()
    assert tuple(reg) == PAPER_MODEL_KEYS
    assert reg["rf_labs"].kind == "random_forest" and reg["rf_labs"].inputs == ("labs",)
    assert set(reg["petct_fusion"].inputs) == {"pet", "ct", "labs"}
    assert reg["pet_only"].inputs == ("pet",) and reg["ct_only"].inputs == ("ct",)


def test_every_declaration_round_trips_through_yaml_with_the_same_hash():
    for spec in load_registry().values():
        again = ModelSpec.from_yaml(spec.to_yaml())
        assert again == spec and again.hash() == spec.hash()


def test_an_eighth_model_is_one_small_yaml_file(tmp_path):
    shutil.copytree(models_dir(), tmp_path / "models")
    (tmp_path / "models" / "pet_fusion_wide.yaml").write_text(
        "name: pet_fusion_wide\ninputs: [pet, labs]\nkind: cnn\nchannels: [16, 32, 64]\n"
    )
    reg = load_registry(tmp_path / "models")
    assert list(reg)[:7] == list(PAPER_MODEL_KEYS) and list(reg)[7] == "pet_fusion_wide"
    assert reg["pet_fusion_wide"].channels == (16, 32, 64)


def test_a_file_whose_name_differs_from_its_model_name_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("name: b\ninputs: [pet]\n")
    with pytest.raises(ModelError, match="file name"):
        load_registry(tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"inputs": ("pet",), "kind": "random_forest"}, "labs"),
        ({"inputs": ("labs",), "kind": "cnn"}, "needs 'pet' and/or 'ct'"),
        ({"inputs": ("mri",)}, "distinct names"),
        ({"inputs": ("pet",), "channels": (8, 16), "strides": (2,)}, "equal"),
        ({"inputs": ("pet",), "ct_init": "x.pt"}, "no CT input"),
    ],
)
def test_impossible_declarations_are_refused_with_the_reason(fields, message):
    with pytest.raises(ModelError, match=message):
        ModelSpec(name="bad", **fields)


def test_the_pretrained_model_without_a_checkpoint_says_it_is_not_pretrained():
    spec = load_registry()["petct_fusion_pretrained"]
    if spec.ct_init is None:
        assert not spec.pretrained
        assert "NOT pretrained" in spec.ct_init_note
    else:
        assert spec.pretrained and str(spec.ct_init) in spec.ct_init_note
    assert load_registry()["pet_fusion"].ct_init_note == ""


def test_a_missing_checkpoint_is_an_error_not_a_silent_fallback(tmp_path):
    spec = ModelSpec(name="m", inputs=("pet", "ct", "labs"), ct_init=tmp_path / "absent.pt")
    with pytest.raises(ModelError, match="does not exist"):
        build_network(spec, img_size=(12, 8, 8))


def test_a_checkpoint_is_loaded_into_the_ct_branch_only(tmp_path):
    base = ModelSpec(name="m", inputs=("pet", "ct", "labs"))
    donor = FusionNet(base, img_size=(12, 8, 8))
    torch.save({"state_dict": {f"encoders.ct.{k}": v for k, v in donor.encoders["ct"].state_dict().items()}},
               tmp_path / "ct.pt")
    net = build_network(base.replace(ct_init=tmp_path / "ct.pt"), img_size=(12, 8, 8))
    for k, v in donor.encoders["ct"].state_dict().items():
        assert torch.equal(net.encoders["ct"].state_dict()[k], v)
    assert not torch.equal(net.encoders["pet"].features[0].conv.weight, donor.encoders["pet"].features[0].conv.weight)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    spec = ModelSpec(name="m", inputs=("ct",), ct_init=tmp_path / "other.pt")
    with pytest.raises(ModelError, match="matches"):
        build_network(spec, img_size=(12, 8, 8))


def test_every_cnn_maps_its_inputs_to_one_logit_per_patient():
    for spec in load_registry().values():
        if spec.kind != "cnn":
            continue
        net = build_network(spec, img_size=(24, 16, 16)).eval()
        xs = [torch.randn(3, 4) if m == "labs" else torch.randn(3, 1, 24, 16, 16) for m in spec.ordered_inputs]
        assert net(*xs).shape == (3,)
        per_image = 2 * spec.channels[-1]  # avgmax pooling
        assert net.embed(*xs).shape == (3, per_image * len(spec.image_inputs) + 4 * spec.uses_labs)


def test_labs_reach_the_head_unchanged_after_the_image_embeddings():
    net = FusionNet(ModelSpec(name="m", inputs=("pet", "labs")), img_size=(12, 8, 8)).eval()
    labs = torch.randn(2, 4)
    emb = net.embed(torch.randn(2, 1, 12, 8, 8), labs)
    assert torch.equal(emb[:, -4:], labs)


def test_flatten_pooling_gives_the_flattened_feature_map():
    enc = ConvEncoder(3, 1, channels=(4, 8), strides=(3, 2), pooling="flatten", img_size=(24, 15, 15))
    # stride 3 then 2 with 'same'-style padding: 24 -> 8 -> 4, 15 -> 5 -> 3
    assert enc.out_features == 8 * 4 * 3 * 3
    assert enc(torch.randn(2, 1, 24, 15, 15)).shape == (2, enc.out_features)


def test_avg_pooling_embedding_is_the_mean_of_the_feature_map():
    enc = ConvEncoder(3, 1, channels=(4,), strides=(2,), pooling="avg", dropout_prob=0.0, img_size=(8, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    assert torch.allclose(enc(x), enc.features(x).mean(dim=(2, 3, 4)))


def test_the_monai_resnet10_reference_encoder_gives_512_features():
    enc = Resnet10Encoder().eval()
    with torch.no_grad():
        assert enc(torch.randn(1, 1, 16, 16, 16)).shape == (1, 512)


def test_max_pooling_embedding_is_the_maximum_of_the_feature_map():
    enc = ConvEncoder(3, 1, channels=(4,), strides=(2,), pooling="max", dropout_prob=0.0, img_size=(8, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    assert torch.equal(enc(x), enc.features(x).amax(dim=(2, 3, 4)))
