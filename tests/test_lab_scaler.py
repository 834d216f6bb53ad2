"""LabScaler saved as plain arrays and restored without any estimator's private attributes (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from prrt_utils.models.inputs import LabScaler


def _labs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(3.0, 1.2, (n, 4))


def test_round_trip_through_json_gives_identical_transforms() -> None:
    train, test = _labs(0, 40), _labs(1, 25)
    fitted = LabScaler().fit(train)
    saved = json.loads(json.dumps(fitted.to_dict()))
    assert set(saved) == {"columns", "transform", "mean", "scale"}
    assert all(isinstance(v, float) for v in saved["mean"] + saved["scale"])
    restored = LabScaler.from_dict(saved)
    np.testing.assert_array_equal(restored.transform(test), fitted.transform(test))
    np.testing.assert_array_equal(restored.mean_, fitted.mean_)
    np.testing.assert_array_equal(restored.scale_, fitted.scale_)
    assert restored.columns == fitted.columns
    assert vars(restored).keys() == {"columns", "mean_", "scale_"}  # no estimator inside


def test_transform_equals_the_scikit_learn_pipeline_it_replaces_bit_for_bit() -> None:
    train, test = _labs(2, 30), _labs(3, 20)
    train[:, 2] = 7.0  # a constant column: scale 1, as StandardScaler
    pipe = Pipeline([("log1p", FunctionTransformer(np.log1p)), ("scale", StandardScaler())]).fit(train)
    ours = LabScaler().fit(train)
    assert ours.scale_[2] == 1.0
    np.testing.assert_array_equal(ours.transform(test), pipe.transform(test).astype(np.float32))
    assert ours.transform(test).dtype == np.float32


def test_wrong_shapes_and_transforms_are_refused() -> None:
    fitted = LabScaler().fit(_labs(4, 10))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        fitted.transform(_labs(5, 3)[:, :3])
    saved = fitted.to_dict()
    with pytest.raises(ValueError, match="one per column"):
        LabScaler.from_dict({**saved, "mean": saved["mean"][:3]})
    with pytest.raises(ValueError, match="not 'log1p'"):
        LabScaler.from_dict({**saved, "transform": "log10"})
