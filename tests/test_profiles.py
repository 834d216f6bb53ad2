"""The training profile (issue 14): `--profile paper` reaches every fold's TrainConfig, is recorded, keys the cache.

And `prrt run --models a b` names the models it ran, not every page of the book.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import folds_of

from prrt_utils import cli
from prrt_utils.models.inputs import TrainingError
from prrt_utils.models.networks import get_spec
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.models.training import TrainConfig, fold_status, run_fold
from prrt_utils.report import book
from prrt_utils.report.book import BookConfig, BookError, declared_parameters

ROOT = Path(__file__).resolve().parent.parent


def test_the_profile_is_recorded_and_only_a_non_default_profile_changes_the_cache_key():
    paper, default = TrainConfig.profile("paper", seed=3), TrainConfig.profile("default", seed=3)
    assert paper.profile_name == "paper" and default.profile_name == "default"
    assert "profile_name: paper" in paper.to_yaml()  # what train.yaml records
    assert TrainConfig.from_yaml(paper.to_yaml()) == paper
    assert paper.hash() != default.hash()
    # the same settings under another profile name are another key, too
    assert TrainConfig.paper().hash() != TrainConfig(**{**TrainConfig.paper().to_dict(), "profile_name": "default",
                                                        "ct_window_hu": (-1000.0, 1000.0)}).hash()
    # the default key is the one folds trained before profiles were recorded carry (they stay valid)
    import hashlib

    blob = {k: v for k, v in default.to_dict().items() if k != "profile_name"}
    assert default.hash() == hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    with pytest.raises(TrainingError, match="profile"):
        TrainConfig(profile_name="fast")


def test_a_fold_trained_with_the_default_profile_is_not_reused_by_the_paper_profile(tmp_path):
    data = toy_cohort_data(30, (6, 4, 4), seed=0)
    folds = folds_of(data)
    spec = get_spec("lr_labs")
    assert run_fold(spec, TrainConfig.profile("default"), data, folds, 0, 0, tmp_path, "f") == "trained"
    assert fold_status(spec, TrainConfig.profile("default"), tmp_path, 0, 0, "f") == ("done", [])
    status, differs = fold_status(spec, TrainConfig.profile("paper"), tmp_path, 0, 0, "f")
    assert status == "stale" and differs == ["train_hash"]
    with pytest.raises(TrainingError, match="train_hash"):
        run_fold(spec, TrainConfig.profile("paper"), data, folds, 0, 0, tmp_path, "f")


def test_the_grid_says_which_profile_the_stored_folds_have(tmp_path):
    from prrt_utils.models.crossval import _profile_hint

    (tmp_path / "results" / "pet_only").mkdir(parents=True)
    (tmp_path / "results" / "pet_only" / "train.yaml").write_text(TrainConfig().to_yaml())
    hint = _profile_hint(tmp_path, "pet_only", TrainConfig.profile("paper"), ["train_hash"])
    assert "'default'" in hint and "'paper'" in hint and "--work" in hint
    assert _profile_hint(tmp_path, "pet_only", TrainConfig(), ["train_hash"]) == ""


@pytest.mark.parametrize("command", ["run", "book"])
def test_profile_paper_on_the_command_line_reaches_the_train_config_of_every_fold(command, monkeypatch, tmp_path):
    args = cli.build_parser().parse_args([command, "--profile", "paper", "--epochs", "3"])
    cfg = cli._book_config(args)
    assert cfg.profile == "paper" and cfg.parameters()["profile"] == "paper"
    seen = {}

    def fake_run_grid(specs, work_dir, cv, train_cfg, **kwargs):
        seen["train_cfg"] = train_cfg

    monkeypatch.setattr("prrt_utils.models.crossval.run_grid", fake_run_grid)
    book.train_all(cfg, tmp_path, ["rf_labs"])
    assert seen["train_cfg"] == TrainConfig.profile("paper", seed=0, device="auto", epochs=3)
    assert cli._book_config(cli.build_parser().parse_args([command])).profile == "default"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--profile", "fast"])
    with pytest.raises(BookError, match="profile"):
        BookConfig(profile="fast")


def test_the_training_page_takes_the_profile_and_states_it():
    import jupytext

    nb = jupytext.read(ROOT / "notebooks" / "train_model.py")
    assert "profile" in declared_parameters(nb)
    source = "\n".join(c.source for c in nb.cells)
    assert "TrainConfig.profile(profile" in source and "Training profile of this run" in source


def _fake_project(root: Path) -> None:
    (root / "notebooks").mkdir()
    (root / "_toc.yml").write_text("format: jb-book\n")


def test_prrt_run_names_the_models_it_ran_not_every_page_of_the_book(monkeypatch, tmp_path, capsys):
    _fake_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    executed = tmp_path / "book" / "executed"
    executed.mkdir(parents=True)
    # pages of an earlier full book are in timings.json
    earlier = {f"train_{m}": 10.0 for m in ("rf_labs", "pet_only", "ct_only", "pet_fusion", "lr_labs")}
    (executed / "timings.json").write_text(json.dumps({**earlier, "03_unimodal": 5.0}))
    monkeypatch.setattr(book, "train_all", lambda *a, **k: None)
    monkeypatch.setattr(book, "_execute_page", lambda cfg, root, page, nb, params: {page: 1.0})
    timings = book.run_models(BookConfig(models=("pet_only", "lr_labs"), n_jobs=1), tmp_path)
    assert timings == {"train_pet_only": 1.0, "train_lr_labs": 1.0}
    assert cli.main(["run", "--models", "pet_only", "lr_labs", "--jobs", "1", "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("trained (training profile 'default'): ")
    assert "pet_only" in line and "lr_labs" in line
    for other in ("rf_labs", "ct_only", "pet_fusion", "03_unimodal"):
        assert other not in line
