"""Unit tests of the named steps of prrt_utils.data.preprocess.run_preprocessing (issue 18: short functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prrt_utils.data import preprocess
from prrt_utils.data.preprocess import PreprocessConfig
from prrt_utils.io import store
from prrt_utils.io.images import InputError


def _folder(tmp_path: Path, pid: str = "P-1") -> Path:
    folder = tmp_path / "imaging" / pid
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"abc")
    return folder


def test_input_hash_changes_with_the_waiver_and_the_label_map(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    plain, labels = preprocess._input_hash(folder, "P-1", False, None, ())
    assert plain == store.sha256_tree(folder) and labels is None
    waived, _ = preprocess._input_hash(folder, "P-1", True, None, ())
    assert waived != plain
    maps = tmp_path / "labels"
    maps.mkdir()
    (maps / "P-1.nii.gz").write_bytes(b"map")
    with_map, labels = preprocess._input_hash(folder, "P-1", False, maps, ("1:liver",))
    assert labels == (str(maps / "P-1.nii.gz"), ("1:liver",))
    other_codes, _ = preprocess._input_hash(folder, "P-1", False, maps, ("1:spleen",))
    assert len({plain, waived, with_map, other_codes}) == 4
    (maps / "P-1.nii.gz").write_bytes(b"other map")
    assert preprocess._input_hash(folder, "P-1", False, maps, ("1:liver",))[0] != with_map


def test_unusable_patient_reasons_and_stop(tmp_path: Path) -> None:
    imaging, out = tmp_path / "imaging", tmp_path / "out"
    _folder(tmp_path)
    out.mkdir()
    skip, stop = PreprocessConfig(), PreprocessConfig(on_error="stop")
    assert preprocess._unusable_patient(skip, "P-1", True, imaging, out) is None
    (out / "P-2.npz").write_bytes(b"stale")
    rec = preprocess._unusable_patient(skip, "P-2", False, imaging, out)
    assert rec["reason"] == "no imaging (has_imaging is false in the cohort)" and rec["status"] == "excluded"
    assert not (out / "P-2.npz").exists()
    assert preprocess._unusable_patient(stop, "P-2", False, imaging, out)["status"] == "excluded"
    assert preprocess._unusable_patient(skip, "P-3", True, imaging, out)["reason"] == "imaging folder not found"
    with pytest.raises(InputError, match="imaging folder not found"):
        preprocess._unusable_patient(stop, "P-3", True, imaging, out)
    bad = preprocess._unusable_patient(skip, "../victim", True, imaging, out)
    assert "cannot name a folder safely" in bad["reason"] and bad["patient_id"] == "../victim"
    with pytest.raises(InputError, match="cannot name a folder safely"):
        preprocess._unusable_patient(stop, "../victim", True, imaging, out)


def test_qc_frame_orders_columns_and_flattens_lists() -> None:
    records = {
        "B": {"status": "ok", "facts": {"z": 1, "spacing": [2.0, 2.5]}},
        "A": {"status": "excluded"},
        "C": {"status": "ok", "facts": {"spacing": [1.0, 1.0], "z": 3}},
    }
    frame = preprocess._qc_frame(records, [("B", True), ("A", True), ("C", True)])
    assert list(frame.columns) == ["patient_id", "spacing", "z"]
    assert frame["patient_id"].tolist() == ["B", "C"]
    assert frame["spacing"].tolist() == ["2 2.5", "1 1"]
    assert preprocess._qc_frame({"A": {"status": "excluded"}}, [("A", True)]).empty


def test_run_jobs_in_one_process_stores_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "_process_patient", lambda job: {"patient_id": job[1], "status": "ok"})

    class Bar:
        n = 0

        def update(self) -> None:
            self.n += 1

    records: dict = {}
    bar = Bar()
    preprocess._run_jobs([(None, "A"), (None, "B")], 1, records, bar)
    assert set(records) == {"A", "B"} and bar.n == 2
