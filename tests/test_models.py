"""Model declarations, registry and networks (prrt_utils.models.networks)."""

from __future__ import annotations

import shutil

import pytest
import torch

from prrt_utils.models.networks import (
    PAPER_MODEL_KEYS,
    ConvEncoder,
    FusionNet,
    ModelError,
    ModelSpec,
    Resnet10Encoder,
    SegResNetEncoder,
    build_network,
    load_encoder_checkpoint,
    load_registry,
    models_dir,
    pretrained_ct_path,
    resolve_ct_init,
)

torch.set_num_threads(1)


def test_registry_holds_the_seven_paper_models_in_table_order_then_the_baselines():
    reg = load_registry()
    assert tuple(reg)[:7] == PAPER_MODEL_KEYS
    assert tuple(reg)[7:] == ("lr_labs", "radiomics_lr")
    assert reg["lr_labs"].kind == "logistic" and reg["radiomics_lr"].inputs == ("pet",)
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
    assert list(reg)[:7] == list(PAPER_MODEL_KEYS) and "pet_fusion_wide" in list(reg)[7:]
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


def test_the_seventh_model_starts_from_ct_pretraining_and_says_so():
    spec = load_registry()["petct_fusion_pretrained"]
    assert spec.pretrained and spec.uses_pretrain_ct
    assert "pretrain-ct" in spec.ct_init_note and "no outcome" in spec.ct_init_note
    assert "NOT pretrained" in spec.replace(ct_init=None).ct_init_note
    assert load_registry()["pet_fusion"].ct_init_note == ""


def test_route_1_resolves_to_the_work_folders_checkpoint_or_says_to_make_it(tmp_path):
    spec = load_registry()["petct_fusion_pretrained"]
    with pytest.raises(ModelError, match="prrt pretrain-ct"):
        resolve_ct_init(spec, tmp_path)
    with pytest.raises(ModelError, match="resolved"):
        build_network(spec, img_size=(12, 8, 8))  # never silently from scratch
    path = pretrained_ct_path(tmp_path)
    path.parent.mkdir()
    torch.save(ConvEncoder(img_size=(12, 8, 8)).state_dict(), path)
    resolved = resolve_ct_init(spec, tmp_path)
    assert resolved.ct_init == path.resolve() and not resolved.uses_pretrain_ct
    assert "anatomy-pretrained" in resolved.ct_init_note and str(tmp_path) not in resolved.ct_init_note
    assert resolve_ct_init(load_registry()["petct_fusion"], tmp_path) == load_registry()["petct_fusion"]


def test_a_missing_checkpoint_is_an_error_not_a_silent_fallback(tmp_path):
    spec = ModelSpec(name="m", inputs=("pet", "ct", "labs"), ct_init=tmp_path / "absent.pt")
    with pytest.raises(ModelError, match="does not exist"):
        build_network(spec, img_size=(12, 8, 8))


def test_a_checkpoint_is_loaded_into_the_ct_branch_only(tmp_path):
    base = ModelSpec(name="m", inputs=("pet", "ct", "labs"), pet_encoder="convnet")
    donor = FusionNet(base, img_size=(12, 8, 8))
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "ct.pt")  # a whole FusionNet: prefix encoders.ct.
    net = build_network(base.replace(ct_init=tmp_path / "ct.pt"), img_size=(12, 8, 8))
    for k, v in donor.encoders["ct"].state_dict().items():
        assert torch.equal(net.encoders["ct"].state_dict()[k], v)
    assert not torch.equal(net.encoders["pet"].features[0].conv.weight, donor.encoders["pet"].features[0].conv.weight)
    report = net.ct_load_report
    assert report.prefix == "encoders.ct." and not report.not_loaded
    assert len(report.loaded) == len([k for k in donor.encoders["ct"].state_dict() if "num_batches" not in k])
    assert report.unused == len(donor.state_dict()) - len(donor.encoders["ct"].state_dict())


def test_a_partial_checkpoint_loads_what_it_has_and_lists_the_rest(tmp_path):
    donor = ConvEncoder(img_size=(12, 8, 8))
    first = {f"encoder.{k}": v for k, v in donor.state_dict().items() if k.startswith("features.0.")}
    torch.save(first, tmp_path / "partial.pt")
    target = ConvEncoder(img_size=(12, 8, 8))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_encoder_checkpoint(target, tmp_path / "partial.pt")
    assert report.prefix == "encoder."
    assert report.loaded and all(k.startswith("features.0.") for k in report.loaded)
    assert report.not_loaded and all(not k.startswith("features.0.") for k in report.not_loaded)
    assert torch.equal(target.features[0].conv.weight, donor.features[0].conv.weight)
    assert torch.equal(target.features[1].conv.weight, before["features.1.conv.weight"])  # kept its init
    assert "NOT loaded" in report.summary()


def test_a_checkpoint_whose_shapes_do_not_fit_stops_with_the_tensors_named(tmp_path):
    torch.save(ConvEncoder(channels=(4, 8, 16), img_size=(12, 8, 8)).state_dict(), tmp_path / "narrow.pt")
    spec = ModelSpec(name="m", inputs=("ct",), ct_init=tmp_path / "narrow.pt")
    with pytest.raises(ModelError, match=r"another shape.*features\.0\.conv\.weight: checkpoint \(4, 1, 3, 3, 3\) vs encoder \(8, 1, 3, 3, 3\)"):
        build_network(spec, img_size=(12, 8, 8))


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    spec = ModelSpec(name="m", inputs=("ct",), ct_init=tmp_path / "other.pt")
    with pytest.raises(ModelError, match="matches"):
        build_network(spec, img_size=(12, 8, 8))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read"):
        build_network(spec.replace(ct_init=tmp_path / "junk.pt"), img_size=(12, 8, 8))


def test_a_monai_segresnet_bundle_checkpoint_loads_into_the_segresnet_encoder(tmp_path):
    from monai.networks.nets import SegResNet

    # what a MONAI CT segmentation bundle's models/model.pt holds: a whole SegResNet's state_dict
    bundle = SegResNet(spatial_dims=3, in_channels=1, out_channels=5, init_filters=4, blocks_down=(1, 2),
                       blocks_up=(1,), norm=("GROUP", {"num_groups": 4}))
    torch.save(bundle.state_dict(), tmp_path / "model.pt")
    spec = ModelSpec(name="m", inputs=("ct", "labs"), encoder="segresnet", channels=(4,), strides=(1,),
                     blocks_down=(1, 2), norm="group", ct_init=tmp_path / "model.pt")
    net = build_network(spec, img_size=(16, 16, 16))
    report = net.ct_load_report
    assert not report.not_loaded and report.prefix == ""
    assert report.unused > 0  # the decoder (up_layers, conv_final) is not part of the encoder
    assert torch.equal(net.encoders["ct"].convInit.conv.weight, bundle.convInit.conv.weight)
    x = torch.randn(2, 1, 16, 16, 16)
    assert net.eval()(x, torch.randn(2, 4)).shape == (2,)
    with torch.no_grad():
        expect = bundle.eval().encode(x)[0]
    assert torch.allclose(net.encoders["ct"](x)[:, :8], expect.mean((2, 3, 4)), atol=1e-6)
    # a bundle of another width is refused with the reason
    wide = SegResNet(spatial_dims=3, in_channels=1, out_channels=5, init_filters=8, blocks_down=(1, 2), blocks_up=(1,))
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ModelError, match="another shape"):
        build_network(spec.replace(ct_init=tmp_path / "wide.pt"), img_size=(16, 16, 16))
    assert SegResNetEncoder(4, (1, 2), ("GROUP", {"num_groups": 4})).out_features == 16


def test_every_cnn_maps_its_inputs_to_one_logit_per_patient():
    for spec in load_registry().values():
        if spec.kind != "cnn":
            continue
        spec = spec.replace(ct_init=None) if spec.uses_pretrain_ct else spec  # weights are not the point here
        net = build_network(spec, img_size=(24, 16, 16)).eval()
        xs = [torch.randn(3, 4) if m == "labs" else torch.randn(3, 1, 24, 16, 16) for m in spec.ordered_inputs]
        assert net(*xs).shape == (3,)
        width = {"pet": 2 * len(spec.thresholds), "ct": 2 * spec.channels[-1]}  # (log)avg + max pooling
        assert net.embed(*xs).shape == (3, sum(width[m] for m in spec.image_inputs) + 4 * spec.uses_labs)


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
