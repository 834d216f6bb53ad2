"""A stage killed at a random moment resumes, redoes nothing finished, and ends with the same files.

Each test runs a real stage in a child process, kills it with SIGKILL (no
clean-up handler runs) at a random moment after it has started writing,
checks that nothing half-written is taken as finished, reruns the stage to the
end and compares every output with that of an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from prrt_utils.io import store

pytestmark = pytest.mark.slow

PYTHON = sys.executable


def _start(code: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([PYTHON, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, extra_s: float, timeout_s: float = 120) -> bool:
    """SIGKILL the process group ``extra_s`` seconds after ``ready()`` first holds; False if it finished first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError("the stage never started writing")
        time.sleep(0.05)
    time.sleep(extra_s)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _run(code: str, cwd: Path) -> None:
    proc = _start(code, cwd)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): store.sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prrt_utils import synthetic as synth

    out = tmp_path_factory.mktemp("export") / "data"
    synth.generate_cohort(synth.SynthConfig(n_patients=8, pet_matrix=32, ct_matrix=48, slice_mm=10.0), out,
                          progress=False)
    return out


PREPROCESS = """
from prrt_utils.data.preprocess import PreprocessConfig, run_preprocessing
run_preprocessing(PreprocessConfig(), None, {imaging!r}, {work!r}, progress=False, n_jobs=1)
"""


def test_killed_preprocessing_resumes_to_the_files_of_an_uninterrupted_run(small_export: Path, tmp_path: Path):
    imaging = str(small_export / "imaging")
    _run(PREPROCESS.format(imaging=imaging, work=str(tmp_path / "ref")), tmp_path)
    reference = _tree(tmp_path / "ref" / "preprocessed")

    work = tmp_path / "killed"
    pre = work / "preprocessed"
    proc = _start(PREPROCESS.format(imaging=imaging, work=str(work)), tmp_path)
    killed = _kill_when(proc, lambda: len(list(pre.glob("*.npz"))) >= 2, random.Random(1).uniform(0.0, 1.0))
    if killed:
        finished = {p.name: p.stat().st_mtime_ns for p in pre.glob("*.npz")}
        assert not (pre / "index.csv").exists() or len(pd.read_csv(pre / "index.csv")) < 8, \
            "a killed run must not leave an index that lists every patient"
        for p in pre.glob("*.npz"):  # whatever was renamed into place is whole
            import numpy as np

            with np.load(p) as z:
                assert z["pet"].shape == (75, 50, 50)
    _run(PREPROCESS.format(imaging=imaging, work=str(work)), tmp_path)
    assert _tree(pre) == reference
    if killed:
        for name, mtime in finished.items():
            assert (pre / name).stat().st_mtime_ns == mtime, f"{name} was finished before the kill and redone"


GRID = """
import torch
torch.set_num_threads(1)
import sys
sys.path.insert(0, {tests!r})
from helpers import write_toy_work
from prrt_utils.models import crossval
from prrt_utils.data.folds import CVConfig
from prrt_utils.models.training import TrainConfig
from prrt_utils.models.toy import toy_cohort_data
from pathlib import Path
work = Path({work!r})
if not (work / "cohort").exists():
    write_toy_work(work, toy_cohort_data(36, (12, 8, 8), seed=2))
crossval._load_volumes = crossval._volumes_from_index
crossval.run_grid(["pet_fusion"], work, CVConfig(n_splits=3, n_repeats=2, seed=0), TrainConfig(epochs=20, device="cpu"),
              n_jobs=1, progress=False, torch_threads=1)
"""


def test_killed_training_resumes_to_the_predictions_of_an_uninterrupted_run(tmp_path: Path):
    tests = str(Path(__file__).parent)
    _run(GRID.format(tests=tests, work=str(tmp_path / "ref")), tmp_path)
    reference = pd.read_parquet(tmp_path / "ref" / "results" / "predictions.parquet")

    work = tmp_path / "killed"
    results = work / "results" / "pet_fusion"
    proc = _start(GRID.format(tests=tests, work=str(work)), tmp_path)
    killed = _kill_when(proc, lambda: len(list(results.glob("r*_f*/done.json"))) >= 1, random.Random(2).uniform(0.0, 0.5))
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in results.glob("r*_f*/done.json")}
    if killed and len(done_before) < 6:  # killed between folds (not after the last one)
        assert not (work / "results" / "predictions.parquet").exists(), "no combined table before every fold is done"
    _run(GRID.format(tests=tests, work=str(work)), tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(work / "results" / "predictions.parquet"), reference)
    for fold, mtime in done_before.items():
        assert (results / fold / "done.json").stat().st_mtime_ns == mtime, f"{fold} was finished before the kill and redone"


BOOK_PAGE = '''\
# %% tags=["parameters"]
seconds = 0.0

# %%
import time
time.sleep(seconds)
print("page finished")
'''

EXECUTE = """
from pathlib import Path
from prrt_utils.report.book import execute_notebook
execute_notebook(Path("page.py"), Path("executed/page.ipynb"), {{"seconds": {seconds}}}, cwd=Path("."))
"""


def test_a_killed_page_execution_never_leaves_a_page_that_looks_finished(tmp_path: Path):
    (tmp_path / "page.py").write_text(BOOK_PAGE)
    out = tmp_path / "executed" / "page.ipynb"
    proc = _start(EXECUTE.format(seconds=30), tmp_path)
    assert _kill_when(proc, lambda: any((tmp_path / "executed").glob(".partial.*")), 1.0)
    assert not out.exists(), "a page killed mid-execution must not be rendered as if whole"
    _run(EXECUTE.format(seconds=0), tmp_path)
    assert "page finished" in out.read_text()
