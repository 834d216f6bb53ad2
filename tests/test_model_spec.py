"""ModelSpec validation (issue 18): typed choices and one error naming every bad field."""

from __future__ import annotations

import pytest

from prrt_utils.models.networks import (
    ENCODERS,
    KINDS,
    POOLINGS,
    ModelError,
    ModelSpec,
    load_registry,
    spec_problems,
)


def test_two_bad_fields_are_both_named_in_one_error() -> None:
    with pytest.raises(ModelError) as err:
        ModelSpec(name="bad", inputs=("pet",), pooling="mean", n_estimators="many")
    text = str(err.value)
    assert text.startswith("model 'bad' has 2 problems:")
    assert "pooling must be one of ['logavgmax', 'avgmax', 'avg', 'max', 'flatten'], got 'mean'" in text
    assert "n_estimators must be a whole number, got 'many'" in text


def test_random_forest_and_cnn_problems_are_listed_together() -> None:
    with pytest.raises(ModelError) as err:
        ModelSpec(name="bad", inputs=("pet",), kind="random_forest", encoder="unet", dropout_prob=1.5,
                  ct_init="x.pt")
    text = str(err.value)
    for words in ("encoder must be one of", "a random_forest takes inputs ['labs'] only",
                  "dropout_prob must lie in [0, 1)", "ct_init is set but the model has no CT input"):
        assert words in text, words
    assert "4 problems" in text


def test_cnn_architecture_problems_are_listed_together() -> None:
    with pytest.raises(ModelError) as err:
        ModelSpec(name="bad", inputs=("ct",), channels=(8, 16), strides=(2,), head=(8,), thresholds=(0.5,))
    text = str(err.value)
    assert "need equal, non-zero length" in text and "head lists the 2 hidden widths" in text
    assert "thresholds must be non-empty multiples of the liver above 0.5" in text


def test_one_problem_keeps_the_old_message() -> None:
    with pytest.raises(ModelError, match=r"^model 'bad': kind must be one of \['random_forest', 'logistic', 'cnn'\]"):
        ModelSpec(name="bad", inputs=("labs",), kind="svm")


def test_choices_come_from_the_annotations_and_every_declared_model_passes() -> None:
    assert KINDS == ("random_forest", "logistic", "cnn")
    assert ENCODERS == ("convnet", "resnet10", "segresnet")
    assert POOLINGS[0] == "logavgmax"
    for spec in load_registry().values():
        assert spec_problems(spec) == []
