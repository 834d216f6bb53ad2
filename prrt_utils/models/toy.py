"""A small cohort with a planted signal for tests and benchmarks (never for results).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prrt_utils.models.inputs import CohortData


def toy_cohort_data(n_patients: int = 60, shape: Sequence[int] = (24, 16, 16), seed: int = 0,
                    signal: bool = True, positive_fraction: float = 0.4) -> CohortData:
    """A small cohort with a planted signal, for tests and the benchmark (never for results).

    Label ``y`` (short PFS) is drawn with ``positive_fraction``. PET (SUV) has
    a noisy background of about 1 and one bright sphere (SUV 12) whose radius is
    larger when ``y = 1``; CT (HU) has soft-tissue noise and a sphere of +150
    HU, also larger when ``y = 1``; ``log CgA`` is shifted by 1.2 when
    ``y = 1`` and GGT by 0.6 (log units), AST/ALT carry no signal. With
    ``signal=False`` the inputs follow a second label ``z`` that overlaps ``y``
    exactly as much as independence predicts (phi coefficient about 0), so no
    model can beat chance on average.

    Returns
    -------
    CohortData
        ``patient_ids`` ``TOY-000 ...``, volumes ``(N, 1, *shape)`` float32.
    """
    rng = np.random.default_rng(seed)
    n_pos = int(round(positive_fraction * n_patients))
    y = np.zeros(n_patients, dtype=int)
    y[rng.choice(n_patients, n_pos, replace=False)] = 1
    if signal:
        z = y
    else:  # as many positives as y, overlapping y as independence predicts: no association in the sample
        k = int(round(n_pos * n_pos / n_patients))
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        z = np.zeros_like(y)
        z[rng.choice(pos, k, replace=False)] = 1
        z[rng.choice(neg, n_pos - k, replace=False)] = 1
    d, h, w = shape
    grid = np.stack(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij"), axis=-1).astype(np.float32)
    pet = np.empty((n_patients, 1, d, h, w), np.float32)
    ct = np.empty_like(pet)
    r_small, r_large = max(1.0, min(shape) / 8), max(2.0, min(shape) / 4)
    for i in range(n_patients):
        low = [min(r_large, (s - 1) / 2) for s in shape]
        centre = np.array([rng.uniform(lo, max(lo, s - 1 - r_large)) for lo, s in zip(low, shape, strict=True)],
                          dtype=np.float32)
        radius = (r_large if z[i] else r_small) * rng.uniform(0.9, 1.1)
        ball = ((grid - centre) ** 2).sum(-1) <= radius**2
        pet[i, 0] = np.clip(1.0 + 0.3 * rng.standard_normal(shape), 0, None) + 11.0 * ball
        ct[i, 0] = 40.0 + 20.0 * rng.standard_normal(shape) + 150.0 * ball
    labs = np.exp(
        np.column_stack(
            [
                np.log(29) + 0.3 * rng.standard_normal(n_patients),
                np.log(26) + 0.3 * rng.standard_normal(n_patients),
                np.log(400) + 1.2 * z + 0.7 * rng.standard_normal(n_patients),
                np.log(58) + 0.6 * z + 0.5 * rng.standard_normal(n_patients),
            ]
        )
    )
    ids = tuple(f"TOY-{i:03d}" for i in range(n_patients))
    return CohortData(patient_ids=ids, y=y, labs=labs, volumes={"pet": pet, "ct": ct})
