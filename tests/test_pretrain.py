"""CT pretraining on anatomy (prrt_utils.models.pretrain) and the label maps it reads (loading.load_label_map)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from prrt_utils.io.images import InputError
from prrt_utils.io.nifti import load_label_map
from prrt_utils.models import pretrain
from prrt_utils.models.networks import (
    ConvEncoder,
    build_network,
    get_spec,
    load_encoder_checkpoint,
    resolve_ct_init,
)

SHAPE = (24, 18, 18)
GRID = np.array([[0.0, 0.0, 10.0, -90.0], [0.0, 10.0, 0.0, -90.0], [-10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""A preprocessed grid like the real one: d head to feet, h anterior to posterior, w right to left, 10 mm."""

write_label_nifti = pretrain.save_label_map


def test_a_label_map_comes_back_in_canonical_order_at_its_lps_positions(tmp_path):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[3, 4, 5] = 7
    write_label_nifti(tmp_path / "a.nii.gz", labels, GRID)
    back, affine = load_label_map(tmp_path / "a.nii.gz", "P1")
    assert back.shape == SHAPE and back.dtype == np.int32
    assert np.allclose(affine, GRID)
    assert tuple(np.argwhere(back == 7)[0]) == (3, 4, 5)
    # the same voxel written flipped along every NIfTI axis is found at the same place
    flip = GRID.copy()
    flip[:3, 3] = GRID[:3, :3] @ (np.array(SHAPE) - 1) + GRID[:3, 3]
    flip[:3, :3] = -GRID[:3, :3]
    write_label_nifti(tmp_path / "b.nii.gz", labels[::-1, ::-1, ::-1], flip)
    back2, affine2 = load_label_map(tmp_path / "b.nii.gz", "P1")
    assert np.array_equal(back2, back) and np.allclose(affine2, GRID)


def test_a_map_that_is_not_labels_is_refused_naming_the_patient(tmp_path):
    img = nib.Nifti1Image(np.full((4, 4, 4), 0.5, dtype=np.float32), np.eye(4))
    nib.save(img, str(tmp_path / "x.nii.gz"))
    with pytest.raises(InputError, match="P9.*not a label map"):
        load_label_map(tmp_path / "x.nii.gz", "P9")


def test_labels_are_resampled_in_millimetres_not_by_array_index():
    # source: 2 mm voxels, origin 0; a cube of code 5 covering x in [10, 20), y in [20, 30), z in (-30, -20]
    src_aff = np.array([[0.0, 0.0, 2.0, 0.0], [0.0, 2.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    src = np.zeros((30, 30, 30), dtype=np.int32)
    src[11:16, 10:15, 5:10] = 5  # d 11..15 -> z -22..-30; h 10..14 -> y 20..28; w 5..9 -> x 10..18
    # target: 5 mm voxels with centres at x = 1 + 5w, y = 1 + 5h, z = -1 - 5d
    tgt_aff = np.array([[0.0, 0.0, 5.0, 1.0], [0.0, 5.0, 0.0, 1.0], [-5.0, 0.0, 0.0, -1.0], [0, 0, 0, 1.0]])
    out = pretrain.labels_on_grid(src, src_aff, tgt_aff, (13, 13, 13))
    assert out[5, 5, 3] == 5  # centre (16, 26, -26) inside the cube
    assert out[5, 5, 1] == 0 and out[5, 2, 3] == 0 and out[2, 5, 3] == 0  # (6, ., .), (., 11, .), (., ., -11)
    assert out[5, 5, 12] == 0  # x = 61 mm lies beyond the source's field of view: background
    assert set(np.unique(out)) == {0, 5}


def test_coarse_labels_sit_where_the_upsampling_puts_them():
    # an ellipsoid body; made coarse (stride 3) and upsampled back it should stay where it was
    d, h, w = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    body = ((d - 11.3) / 9.6) ** 2 + ((h - 8.4) / 6.2) ** 2 + ((w - 9.1) / 5.7) ** 2 < 1
    y = torch.from_numpy(body.astype(np.int64))[None, None]

    def round_trip(c):
        up = torch.nn.functional.interpolate(torch.cat([1.0 - c.float(), c.float()], 1), size=SHAPE,
                                             mode="trilinear", align_corners=False).argmax(1)
        return float(2 * ((up == 1) & (y[:, 0] == 1)).sum() / ((up == 1).sum() + (y[:, 0] == 1).sum()))

    exact = round_trip(pretrain.coarse_labels(y, (8, 6, 6)))
    first_voxel = round_trip(torch.nn.functional.interpolate(y.float(), size=(8, 6, 6), mode="nearest").long())
    assert exact > 0.8 and exact > first_voxel + 0.05  # "nearest" takes each block's first voxel: one voxel off


def test_label_codes_are_mapped_and_an_unlisted_code_stops_the_run():
    lookup = pretrain.PretrainConfig().lookup()
    assert lookup[11] == pretrain.ANATOMY_CLASSES.index("lesion") and lookup[16] == 0 and lookup[8] == 1
    with pytest.raises(pretrain.PretrainError, match="class one of"):
        pretrain.PretrainConfig(label_map=("1:body", "2:brain"))
    with pytest.raises(pretrain.PretrainError, match="twice"):
        pretrain.PretrainConfig(label_map=("1:body", "1:lung"))


def _toy_work(root, n=14, seed=0):
    """A study work folder (ids S...), and a preprocessed pretraining population (ids T...) with label maps.

    Returns ``(work, population, labels)``: the study's WORK, the population's work folder (its
    ``preprocessed/``), and the population's label maps. CT anatomy is visible in HU.
    """
    rng = np.random.default_rng(seed)
    study = root / "work" / "preprocessed"
    study.mkdir(parents=True)
    pd.DataFrame({"patient_id": ["S001", "S002"], "status": "ok", "reason": "", "file": ["S001.npz", "S002.npz"]}
                 ).to_csv(study / "index.csv", index=False)
    pre, labels_dir = root / "population" / "preprocessed", root / "labels"
    pre.mkdir(parents=True)
    labels_dir.mkdir()
    d, h, w = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    rows = []
    for i in range(n):
        pid = f"T{i:03d}"
        c = np.array(SHAPE) / 2 + rng.normal(0, 1.0, 3)
        body = ((d - c[0]) / 11) ** 2 + ((h - c[1]) / 7) ** 2 + ((w - c[2]) / 7) ** 2 < 1
        lung = body & (d < c[0] - 2) & (np.abs(w - c[2]) > 1.5) & (((h - c[1]) / 5) ** 2 + ((w - c[2]) / 5) ** 2 < 1)
        bone = body & (np.abs(h - c[1] - 3) < 1.5) & (np.abs(w - c[2]) < 1.5)
        lab = np.where(bone, 7, np.where(lung, 2, np.where(body, 1, 0))).astype(np.uint8)
        ct = np.select([bone, lung, body], [700.0, -800.0, 40.0], -1000.0) + rng.normal(0, 20, SHAPE)
        np.savez(pre / f"{pid}.npz", pet=np.zeros(SHAPE, np.float32), ct=ct.astype(np.float32), affine=GRID)
        write_label_nifti(labels_dir / f"{pid}.nii.gz", lab, GRID)
        rows.append({"patient_id": pid, "status": "ok", "reason": "", "file": f"{pid}.npz"})
    rows.append({"patient_id": "T999", "status": "excluded", "reason": "no CT", "file": ""})
    pd.DataFrame(rows).to_csv(pre / "index.csv", index=False)
    return root / "work", root / "population", labels_dir


def _pretrain(work, population, labels, cfg, **kw):
    return pretrain.pretrain_on(work, population, labels, cfg, threads=1, **kw)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    work, population, labels = _toy_work(root)
    cfg = pretrain.PretrainConfig(label_map=("0:background", "1:body", "2:lung", "7:bone"),
                                  epochs=25, batch_size=4, device="cpu")
    result = _pretrain(work, population, labels, cfg)
    return work, population, labels, cfg, result


def test_pretraining_learns_anatomy_it_can_see_and_writes_a_model_card(toy):
    work, _, _, cfg, result = toy
    assert not result.reused and result.checkpoint == pretrain.checkpoint_path(work)
    dice = result.dice.set_index("class")["dice_mean"]
    # HU separates them, so a working pipeline learns them up to what the training resolution allows
    # (ceiling about 0.82 for body, 0.80 for lung on these small volumes)
    assert dice["body"] > 0.7 and dice["lung"] > 0.4
    ceiling = result.dice.set_index("class")["dice_ceiling"]
    assert ceiling["body"] > 0.8 and dice["body"] <= ceiling["body"] + 0.05
    assert np.isnan(dice["liver"])  # absent from every held-out patient: no Dice, not a zero
    assert result.history["train_loss"].iloc[-1] < 0.6 * result.history["train_loss"].iloc[0]
    card = result.card
    assert card["n_train"] + card["n_held_out"] == 14 and card["n_skipped"] == 1
    assert card["task"].endswith("(no outcome used)")
    assert result.skipped.set_index("patient_id").loc["T999", "reason"] == "no preprocessed images"
    split = pd.read_csv(work / "pretrained" / "split.csv")
    assert set(split["patient_id"]) == {f"T{i:03d}" for i in range(14)} and split["patient_id"].is_unique
    assert card["population"]["study_patients"] == 0 and card["population"]["n_patients"] == 14
    assert card["population"]["lesion_class"] == "not taught"  # this toy's label map lists no lesion code


def test_the_seventh_model_loads_every_tensor_of_the_pretrained_encoder(toy):
    work, *_ , result = toy
    spec = resolve_ct_init(get_spec("petct_fusion_pretrained"), work)
    net = build_network(spec, img_size=SHAPE)
    assert not net.ct_load_report.not_loaded and net.ct_load_report.unused == 0
    saved = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    for k, v in net.encoders["ct"].state_dict().items():
        assert torch.equal(v, saved[k])
    fresh = ConvEncoder(img_size=SHAPE)
    assert len(load_encoder_checkpoint(fresh, result.checkpoint).loaded) == len(
        [k for k in fresh.state_dict() if "num_batches" not in k])


def test_a_rerun_reuses_the_checkpoint_and_new_labels_retrain(toy, tmp_path):
    work, population, labels, cfg, result = toy
    mtime = os.stat(result.checkpoint).st_mtime_ns
    again = _pretrain(work, population, labels, cfg)
    assert again.reused and os.stat(result.checkpoint).st_mtime_ns == mtime
    assert again.card["key"] == result.card["key"]
    # a copy with one label map changed gets another key (a stale checkpoint is never reused)
    import shutil

    shutil.copytree(work, tmp_path / "work")
    shutil.copytree(labels, tmp_path / "labels")
    img = nib.load(str(tmp_path / "labels" / "T000.nii.gz"))
    data = np.asarray(img.dataobj).copy()
    data[data == 7] = 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(tmp_path / "labels" / "T000.nii.gz"))
    other = _pretrain(tmp_path / "work", population, tmp_path / "labels", cfg.replace(epochs=1))
    assert not other.reused and other.card["key"] != result.card["key"]


def test_pretraining_is_deterministic_on_cpu(toy, tmp_path):
    work, population, labels, cfg, result = toy
    import shutil

    shutil.copytree(work / "preprocessed", tmp_path / "work" / "preprocessed")
    second = _pretrain(tmp_path / "work", population, labels, cfg)
    assert not second.reused
    a = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(second.checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(result.history, second.history)


def test_unknown_label_codes_and_missing_label_maps_are_named(toy, tmp_path):
    work, population, labels, cfg, _ = toy
    with pytest.raises(pretrain.PretrainError, match=r"T000.*code\(s\) \[7\]"):
        _pretrain(work, population, labels, cfg.replace(label_map=("0:background", "1:body", "2:lung")), force=True)
    (tmp_path / "few").mkdir()
    with pytest.raises(pretrain.PretrainError, match="only 0 patient"):
        _pretrain(work, population, tmp_path / "few", cfg)
    (tmp_path / "pop" / "imaging").mkdir(parents=True)
    with pytest.raises(pretrain.PretrainError, match="label map folder .* not found"):
        pretrain.pretrain_ct(work, tmp_path, cfg.replace(population_dir=str(tmp_path / "pop")))


def test_prrt_pretrain_ct_explains_that_an_own_cohort_needs_a_separate_population(tmp_path, capsys):
    from prrt_utils import cli

    (tmp_path / "own" / "imaging").mkdir(parents=True)
    assert cli.main(["pretrain-ct", "--work", str(tmp_path / "work"), "--data", str(tmp_path / "own"), "--quiet"]) == 2
    assert "never uses the study's own patients" in capsys.readouterr().err


def test_pretraining_refuses_a_population_that_holds_a_study_patient(toy, tmp_path):
    work, population, labels, cfg, _ = toy
    import shutil

    shutil.copytree(work, tmp_path / "work")
    index = pd.read_csv(tmp_path / "work" / "preprocessed" / "index.csv")
    index.loc[len(index)] = {"patient_id": "T005", "status": "ok", "reason": "", "file": "T005.npz"}
    index.to_csv(tmp_path / "work" / "preprocessed" / "index.csv", index=False)
    with pytest.raises(pretrain.PretrainError, match="patient T005 .* is a study patient"):
        _pretrain(tmp_path / "work", population, labels, cfg)
    # and the study's own export is never a population, nor is an own cohort without a separate set
    (tmp_path / "own" / "imaging").mkdir(parents=True)
    with pytest.raises(pretrain.PretrainError, match="study's own export"):
        pretrain.pretraining_population(tmp_path / "own", cfg.replace(population_dir=str(tmp_path / "own")))
    with pytest.raises(pretrain.PretrainError, match="never uses the study's own patients"):
        pretrain.pretraining_population(tmp_path / "own", cfg)
    assert not pretrain.population_available(tmp_path / "own")


@pytest.mark.slow
def test_a_synthetic_study_is_pretrained_on_an_independent_population_with_no_study_patient(tmp_path):
    """The default route end to end: generated population beside the cohort, preprocessed, pretrained."""
    from prrt_utils.data.preprocess import PreprocessConfig
    from prrt_utils.synthetic import SynthConfig, generate_cohort

    data = tmp_path / "data" / "synthetic"
    generate_cohort(SynthConfig(n_patients=3, seed=4), data, progress=False)
    study_ids = pd.read_csv(data / "clinical.csv", dtype={"patient_id": str})["patient_id"].tolist()
    work = tmp_path / "work"
    (work / "preprocessed").mkdir(parents=True)  # the study's settings and ids; its volumes are never read
    (work / "preprocessed" / "config.yaml").write_text(PreprocessConfig().to_yaml())
    pd.DataFrame({"patient_id": study_ids, "status": "ok", "reason": "", "file": [f"{p}.npz" for p in study_ids]}
                 ).to_csv(work / "preprocessed" / "index.csv", index=False)
    cfg = pretrain.PretrainConfig(population_size=10, epochs=1, batch_size=4, device="cpu", seed=4)
    result = pretrain.pretrain_ct(work, data, cfg, threads=1)
    split = pd.read_csv(work / "pretrained" / "split.csv", dtype={"patient_id": str})
    assert len(split) == 10 and not set(split["patient_id"]) & set(study_ids)
    assert split["patient_id"].str.startswith("ANAT-").all()
    pop = result.card["population"]
    assert pop["synthetic_seed"] == 4 + pretrain.POPULATION_SEED_OFFSET and pop["study_seed"] == 4
    assert pop["folder"] == "synthetic-pretrain" and pop["study_patients"] == 0
    assert (tmp_path / "data" / "synthetic-pretrain" / "complete.json").is_file()
    assert "lesion" in result.dice["class"].tolist() and pop["lesion_class"].startswith("taught")


def test_dice_verdict_sorts_classes_by_the_two_thresholds():
    dice = pd.DataFrame({"class": ["liver", "kidney", "lesion", "spleen"], "dice_mean": [0.9, 0.5, 0.05, 0.3]})
    assert pretrain.dice_verdict(dice) == ("Classes segmented with Dice ≥ 0.5 on held-out patients: **liver, kidney**. "
                                           "Not learned (Dice < 0.1): **lesion**.")
    assert "**none**. Not learned" in pretrain.dice_verdict(dice.assign(dice_mean=0.2))


def test_card_markdown_states_population_study_patients_and_checkpoint():
    card = {"task": "anatomy segmentation", "classes": ["background", "liver", "spleen"],
            "population": {"kind": "synthetic", "folder": "data/synthetic-pretrain", "synthetic_seed": 1000,
                           "study_seed": 0, "n_patients": 60, "study_patients": 0, "lesion_class": "kept",
                           "seconds_generate_and_preprocess": 12.4},
            "labels_source": "generator", "n_train": 48, "n_held_out": 12, "n_skipped": 0,
            "created_for_model": "petct_fusion_pretrained", "encoder": {"channels": [8, 16], "strides": [2, 2]},
            "seconds": 30.2, "device": "cpu", "threads": 1, "held_out_dice_mean_foreground": 0.734,
            "checkpoint_sha256": "abcdef0123456789ffff"}
    cfg = pretrain.PretrainConfig(epochs=3, seed=7)
    md = pretrain.card_markdown(card, cfg, reused=True)
    assert "2 classes plus background" in md and "generator seed 1000 against the cohort's 0" in md
    assert "**0 study patients**" in md and "held out (by patient, seed 7)" in md and "3 epochs" in md
    assert "(this run reused the cached checkpoint)" in md and "0.73" in md and "`abcdef0123456789…`" in md
    del card["population"]["synthetic_seed"]
    assert "generator seed" not in pretrain.card_markdown(card, cfg)


def test_the_page_without_pretraining_says_where_the_ct_branch_starts(tmp_path):
    cfg = pretrain.PretrainConfig()
    page = pretrain.pretrain_page(tmp_path / "work", tmp_path / "data", cfg, ct_init="none")
    assert page.start == "none" and page.result is None and not page.population_found
    assert "FROM SCRATCH" in page.statement().data and "--pretrain-data DIR" in page.statement().data
    assert page.card() is None and page.losses() is None and page.dice() == () and page.load_check() == ()
    given = pretrain.PretrainPage(cfg, "/somewhere/encoder.pt")
    assert "checkpoint `encoder.pt` given by path" in given.statement().data
    asked = pretrain.PretrainPage(cfg, "none", population_found=True)
    assert "(`ct_init: none` was asked for)" in asked.statement().data


def test_loss_figure_draws_the_training_and_held_out_losses():
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "held_out_loss": [1.1, 0.7]})
    fig = pretrain.loss_figure(history)
    assert [t.name for t in fig.data] == ["training patients", "held-out patients"]
    assert list(fig.data[1].y) == [1.1, 0.7]
