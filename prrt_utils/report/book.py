"""Execute the notebooks in reading order with papermill and build the Jupyter Book.

The notebooks in ``notebooks/`` are jupytext percent-format ``.py`` files and
stay the only source: each is read with jupytext, executed by papermill with its
parameters, and written to ``book/executed/<name>.ipynb`` (git-ignored) by an
atomic rename, so a page that failed halfway is never rendered as if whole
(its partial copy is kept as ``<name>.failed.ipynb`` for debugging). The book is
then rendered by Jupyter Book 1 with execution off.

Order (the data flow of DESIGN.md):

1. the synthetic cohort is generated if the data folder is the default one and
   holds no cohort yet (:mod:`prrt_utils.synthetic`);
2. ``01_cohort``, ``02_preprocessing``;
3. ``pretrain_ct`` (CT encoder pretrained on anatomy of a population outside the study, no
   outcome; for the synthetic cohort an independent synthetic population) when a model
   starts its CT branch from it, then ``train_model`` once per model (papermill parameter ``model``), each run
   training or resuming that model's folds (:func:`run_models`);
   then, on the synthetic cohort only, the positive control at full size
   (:func:`ensure_positive_control`, :mod:`prrt_utils.report.positive_control`: its own cohort in
   ``data/synthetic-positive-control``, its own work in ``WORK/positive-control``), shown by the page
   ``positive_control``; then the training of the analysis chapters (:func:`train_chapter_models`):
   chapter 07's survival models and chapter 08's final model package (after its synthetic second centre);
4. ``00_summary`` (the results-first answer, placed right after the introduction),
   ``03_unimodal``, ``04_fusion``, ``05_statistics``, ``06_explainability`` (read
   stored results; never retrain), ``07_survival`` (survival models on the same folds, read from
   the stage above), ``08_validation`` (the stage's model package applied to the synthetic second
   centre, generated beside the synthetic cohort); these and the model pages read only what the
   stages before them stored, so they run ``n_jobs`` at a time (:func:`execute_pages`);
5. ``90_reproducibility`` (versions, seed, configurations, input hashes, the
   execution time of every page above);
6. ``jupyter-book build`` into ``_build/html``.

Every stage caches its outputs, so a second ``make book`` re-executes the pages
quickly without retraining.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prrt_utils.analysis import validation
from prrt_utils.data.cohort import PFS_THRESHOLD_MONTHS
from prrt_utils.data.cohort_source import CohortSource
from prrt_utils.data.folds import CVConfig
from prrt_utils.data.intake import intake, intake_dir
from prrt_utils.data.paper import MODEL_KEYS
from prrt_utils.io import log, store
from prrt_utils.io.config import SEED, Config
from prrt_utils.models import crossval, final, survival
from prrt_utils.models.networks import BASELINE_KEYS, get_spec, override_ct_init
from prrt_utils.models.pretrain import population_available
from prrt_utils.models.training import PROFILES, TrainConfig
from prrt_utils.report.notebook import data_source
from prrt_utils.report.positive_control import PositiveControlConfig, run_positive_control
from prrt_utils.synthetic import SynthConfig, generate_cohort

__all__ = [
    "ANALYSIS_CHAPTERS",
    "STATIC_HREF",
    "DATA_CHAPTERS",
    "BookConfig",
    "BookError",
    "build_html",
    "ensure_data",
    "ensure_positive_control",
    "execute_notebook",
    "fold_code",
    "prepare_for_book",
    "make_book",
    "page_parameters",
    "repo_root",
    "resolve_cohort",
    "run_models",
    "say_done",
    "static_dir",
    "static_href",
    "train_chapter_models",
]

DATA_CHAPTERS = ("01_cohort", "02_preprocessing")
ANALYSIS_CHAPTERS = (
    "00_summary", "03_unimodal", "04_fusion", "05_statistics", "06_explainability", "07_survival", "08_validation",
    "90_reproducibility",
)
TRAIN_TEMPLATE = "train_model"
_LONG_PAGES = ("08_validation", "07_survival", "06_explainability")
PRETRAIN_PAGE = "pretrain_ct"
POSITIVE_CONTROL_PAGE = "positive_control"
DEFAULT_SYNTHETIC = Path("data/synthetic")


class BookError(RuntimeError):
    """A notebook failed (named with its cell) or the book could not be built."""


@dataclasses.dataclass(frozen=True)
class BookConfig(Config):
    """What ``prrt book`` runs.

    Attributes
    ----------
    data_dir, work_dir : str
        Raw cohort (DESIGN.md "Raw export") and the folder of every stage's outputs,
        relative to the repository root or absolute.
    seed : int
        Fixes the synthetic cohort, the splits and every network's initial weights.
    n_jobs : int
        Worker processes for generation, preprocessing and training, and pages
        executed at once after training (:func:`execute_pages`).
    models : tuple of str
        Model keys to train (``models/*.yaml``); empty means the paper's seven.
    n_repeats, n_splits : int
        Repeated stratified cross-validation (paper: 5 x 3).
    epochs : int
        Training epochs; 0 keeps the training default.
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    scheduler : str
        Dask scheduler address for the folds; empty runs local processes.
    synth_patients : int
        Size of the synthetic cohort generated when ``data_dir`` is the default and empty.
    on_error : str
        ``skip`` a patient whose data cannot be used (and list it) or ``stop``.
    kernel : str
        Jupyter kernel that executes the notebooks.
    cohort_yaml : str
        Own cohort (:class:`prrt_utils.data.cohort_source.CohortSource` YAML); when set, the
        export is normalised into ``data/intake/<name>/`` and read from there
        (``data_dir`` is replaced), with the YAML's PFS threshold.
    pfs_threshold_months : float
        PFS split in months passed to the cohort chapter (paper: 12).
    ct_init : str
        Where the CT branch of models declared ``ct_init: pretrain-ct`` starts:
        ``""`` as declared (route 1: CT pretraining on anatomy runs first, page
        ``pretrain_ct``), ``"none"`` from scratch, or a checkpoint path (route 2).
    ct_labels_dir : str
        Label maps of the CT pretraining population; empty = the population's own
        (``ct_labels/`` or the synthetic ``ground_truth/labels/``).
    pretrain_data_dir : str
        CT pretraining population: a separate set of patients outside the study
        (raw-export layout). Empty: an independent synthetic population when the
        cohort is synthetic (:func:`prrt_utils.models.pretrain.pretraining_population`);
        an own cohort without one trains the CT branch from scratch and says so.
    pretrain_patients : int
        Size of the independent synthetic pretraining population; 0 keeps the
        default (:data:`prrt_utils.models.pretrain.POPULATION_SIZE`).
    pretrain_epochs : int
        Epochs of CT pretraining; 0 keeps the default
        (:attr:`prrt_utils.models.pretrain.PretrainConfig.epochs`). The test book uses a few.
    validation_model : str
        Model packaged and validated in chapter 08 on the synthetic second
        centre (empty: no validation chapter content).
    profile : str
        Training recipe of every network (:meth:`prrt_utils.models.training.TrainConfig.profile`):
        ``default`` (one that learns) or ``paper`` (the paper's literal recipe). Recorded in each
        model's ``train.yaml`` and part of the folds' cache key.
    positive_control : bool
        Run the positive control (:mod:`prrt_utils.report.positive_control`) when the book runs on the
        synthetic cohort (never on an own cohort: the control is about the pipeline, not the data).
    """

    data_dir: str = str(DEFAULT_SYNTHETIC)
    work_dir: str = "work"
    seed: int = SEED
    n_jobs: int = 2
    models: tuple[str, ...] = ()
    n_repeats: int = 5
    n_splits: int = 3
    epochs: int = 0
    device: str = "auto"
    scheduler: str = ""
    synth_patients: int = SynthConfig.n_patients
    on_error: str = "skip"
    kernel: str = "python3"
    cohort_yaml: str = ""
    pfs_threshold_months: float = PFS_THRESHOLD_MONTHS
    ct_init: str = ""
    ct_labels_dir: str = ""
    pretrain_data_dir: str = ""
    pretrain_patients: int = 0
    pretrain_epochs: int = 0
    validation_model: str = "pet_fusion"
    profile: str = "default"
    positive_control: bool = True

    def __post_init__(self) -> None:

        if self.on_error not in ("skip", "stop"):
            raise BookError(f"on_error must be 'skip' or 'stop', got {self.on_error!r}")
        if self.profile not in PROFILES:
            raise BookError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.pretrain_epochs < 0:
            raise BookError(f"pretrain_epochs must be >= 0 (0: the default), got {self.pretrain_epochs}")
        object.__setattr__(self, "models", tuple(self.models))

    @property
    def model_keys(self) -> tuple[str, ...]:
        if self.models:
            return self.models

        return (*MODEL_KEYS, *BASELINE_KEYS)

    def parameters(self) -> dict[str, Any]:
        """Values offered to every notebook; each takes those its ``parameters`` cell declares."""
        return {
            "data_dir": self.data_dir,
            "work_dir": self.work_dir,
            "seed": self.seed,
            "n_jobs": self.n_jobs,
            "n_repeats": self.n_repeats,
            "n_splits": self.n_splits,
            "epochs": self.epochs,
            "device": self.device,
            "scheduler": self.scheduler,
            "on_error": self.on_error,
            "pfs_threshold_months": self.pfs_threshold_months,
            "ct_init": self.ct_init,
            "labels_dir": self.ct_labels_dir,
            "pretrain_data_dir": self.pretrain_data_dir,
            "pretrain_patients": self.pretrain_patients,
            "pretrain_epochs": self.pretrain_epochs,
            "validation_model": self.validation_model,
            "profile": self.profile,
            "positive_control_data_dir": str(POSITIVE_CONTROL_DATA) if self.runs_positive_control else "",
        }

    def train_config(self) -> Any:
        """The :class:`~prrt_utils.models.training.TrainConfig` of every fold: the profile, the seed, device, epochs."""

        return TrainConfig.profile(self.profile, seed=self.seed, device=self.device,
                                   **({"epochs": int(self.epochs)} if self.epochs else {}))

    @property
    def runs_positive_control(self) -> bool:
        """Whether the positive control runs: asked for, and the book is on the default synthetic cohort."""
        return self.positive_control and not self.cohort_yaml and Path(self.data_dir) == DEFAULT_SYNTHETIC

    @property
    def has_pretrained_model(self) -> bool:
        """True when a model to train declares a pretrained CT branch (its page ``pretrain_ct`` is then made)."""

        return any(get_spec(m).pretrained for m in self.model_keys)


def resolve_cohort(cfg: BookConfig, root: Path) -> BookConfig:
    """With ``cohort_yaml`` set: run the intake and point ``data_dir`` and the threshold at its result."""
    if not cfg.cohort_yaml:
        return cfg

    path = Path(cfg.cohort_yaml)
    source = CohortSource.load(path if path.is_absolute() else root / path)
    data = intake(source, intake_dir(root, source))
    return cfg.replace(data_dir=str(data), pfs_threshold_months=float(source.pfs_threshold_months))


def repo_root(start: str | Path | None = None) -> Path:
    """The folder holding ``_toc.yml`` and ``notebooks/``: ``start`` (default cwd) or a parent, else the package's parent."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists() and (folder / "notebooks").is_dir():
            return folder
    pkg_parent = Path(__file__).resolve().parents[2]
    if (pkg_parent / "_toc.yml").exists():
        return pkg_parent
    raise BookError(f"no _toc.yml and notebooks/ in {here} or its parents: run prrt book from the repository")


def _executed_dir(root: Path) -> Path:
    return root / "book" / "executed"


STATIC_HREF = "../../_static"
"""The book's ``_static`` folder as a link from an executed page (how Jupyter Book lays out the HTML)."""


def static_dir(root: str | Path = ".") -> Path:
    """The book's ``_static`` folder under the executed pages: files a page writes there ship with the book.

    Pages run with the repository root as working directory, so the default ``root`` is ``"."``.
    """
    return _executed_dir(Path(root)) / "_static"


def static_href(name: str) -> str:
    """The link from a page to ``name`` in :func:`static_dir` (``"../../_static/<name>"``)."""
    return f"{STATIC_HREF}/{name}"


def declared_parameters(nb: Any) -> set[str]:
    """Names assigned in a notebook's ``parameters`` cell (read with :mod:`ast`).

    Not papermill's own ``inspect_notebook``: its line parser gives up on a line
    whose comment holds ``=`` and then drops that parameter silently.
    """
    import ast

    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


#: Arguments of every kernel papermill starts: its own log silenced, so that the warning that the local
#: kernel "is running over TCP without encryption" (ipykernel 7, once per page) and the "KeyboardInterrupt
#: caught in kernel" of its shutdown do not bury the book's own lines. What a page's code prints or warns
#: goes into the page, and a kernel that dies still stops the page with papermill's error.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]

#: Jupyter Book 1 cell tags that already say how a cell is shown (``show-input``: keep the code visible);
#: :func:`fold_code` leaves a cell carrying one of them as it is.
SHOWN_AS_TAGGED = frozenset({"remove-cell", "remove-input", "hide-input", "hide-cell", "show-input"})


def _is_setup(source: str) -> bool:
    """Whether a code cell only prepares the page: it calls ``setup_notebook`` or is nothing but imports."""
    import ast

    if "setup_notebook(" in source:
        return True
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics: not plain Python, so not an import-only cell
        return False
    return bool(body) and all(isinstance(node, ast.Import | ast.ImportFrom) for node in body)


def fold_code(nb: Any) -> Any:
    """Tag the cells of an executed notebook so that a reader of the book sees results, not code.

    * the ``parameters`` cell and papermill's ``injected-parameters`` cell: ``remove-cell``
      (the values the page ran with are the injected ones; showing both printed the parameters twice);
    * the setup cells, i.e. the first run of code cells (up to the markdown cell that follows
      them) and any cell that only imports or calls ``setup_notebook``: ``remove-input`` (their
      output, such as the data-source line, stays);
    * every other code cell: ``hide-input``, one click away behind Jupyter Book's "show code" toggle.

    A cell already tagged with one of :data:`SHOWN_AS_TAGGED` keeps its tag. Modifies ``nb`` in
    place and returns it; applying it twice changes nothing more.
    """
    opening = True  # code cells before the first markdown cell that follows a code cell
    seen_code = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            opening = opening and not seen_code
            continue
        seen_code = True
        tags = list(cell.metadata.get("tags", []))
        if SHOWN_AS_TAGGED & set(tags):
            continue
        if {"parameters", "injected-parameters"} & set(tags):
            tags.append("remove-cell")
        elif opening or _is_setup(cell.source):
            tags.append("remove-input")
        else:
            tags.append("hide-input")
        cell.metadata["tags"] = tags
    return nb


def _is_plotly_library(output: Any) -> bool:
    """Whether an output is plotly.js itself, as plotly's ``notebook`` renderer writes it before the first figure."""
    import re

    html = output.get("data", {}).get("text/html", "")
    html = "".join(html) if isinstance(html, list) else html
    return len(html) > 100_000 and re.search(r"\*\s*plotly\.js v\d", html[:5000]) is not None


def prepare_for_book(nb: Any) -> Any:
    """An executed notebook made ready to be a page: code folded (:func:`fold_code`), plotly.js removed.

    plotly's ``notebook`` renderer (:func:`prrt_utils.report.notebook.setup_notebook`) writes the whole
    library (4.6 MB) into the page before its first figure, which is what a live notebook needs;
    the book instead loads one copy from its ``_static`` folder on every page that draws a figure
    (:mod:`prrt_utils.report.sphinx_plotly`), so that copy is dropped here. Modifies ``nb`` in place.
    """
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not _is_plotly_library(o)]
    return fold_code(nb)


def execute_notebook(source: str | Path, output: str | Path, parameters: dict[str, Any], cwd: str | Path,
                     kernel: str = "python3") -> float:
    """Execute a jupytext ``.py`` notebook with papermill; write it atomically; return seconds.

    Only the parameters the notebook declares are passed. The executed copy is
    made ready for the book by :func:`prepare_for_book` (code folded, plotly.js
    left to the book's ``_static``). On failure the partial
    notebook is kept beside the output as ``<name>.failed.ipynb`` and
    :class:`BookError` names the notebook and the error.
    """
    import jupytext
    import nbformat
    import papermill as pm

    source, output = Path(source), Path(output)
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": kernel, "language": "python", "display_name": "Python 3"})
    declared = declared_parameters(nb)
    params = {k: v for k, v in parameters.items() if k in declared}
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    partial = output.with_name(f".partial.{output.name}")
    t0 = time.perf_counter()
    log.get_logger("book").debug(f"executing {source.name} into {output.name} with {sorted(params)}")
    try:
        executed = pm.execute_notebook(nb, str(partial), parameters=params, kernel_name=kernel, cwd=str(cwd),
                                       progress_bar=False, log_output=False, extra_arguments=KERNEL_ARGUMENTS)
    except pm.PapermillExecutionError as exc:
        os.replace(partial, failed)
        first = next((line for line in str(exc.source).splitlines() if line.strip()), "")
        raise BookError(f"{source.name} failed in the cell beginning {first!r}: {exc.ename}: {exc.evalue} "
                        f"(the executed copy is {failed})") from None
    nbformat.write(prepare_for_book(executed), str(partial))
    os.replace(partial, output)
    failed.unlink(missing_ok=True)
    return time.perf_counter() - t0


def ensure_data(cfg: BookConfig, root: Path, progress: bool = True) -> Path:
    """The raw cohort folder; the default synthetic one is generated when it holds no complete cohort."""
    data = (root / cfg.data_dir).resolve()
    if (data / "clinical.csv").exists() and ((data / "complete.json").exists() or Path(cfg.data_dir) != DEFAULT_SYNTHETIC):
        return data
    if Path(cfg.data_dir) != DEFAULT_SYNTHETIC:
        raise BookError(f"{data} has no clinical.csv: point --data at a cohort export (see DESIGN.md)")

    log.say("book", f"generating the synthetic cohort ({cfg.synth_patients} patients, seed {cfg.seed}) in {data}")
    generate_cohort(SynthConfig(n_patients=cfg.synth_patients, seed=cfg.seed), data, progress=progress,
                    n_jobs=cfg.n_jobs)
    return data


SECOND_CENTRE = DEFAULT_SYNTHETIC.parent / "synthetic-b"
POSITIVE_CONTROL_DATA = DEFAULT_SYNTHETIC.parent / "synthetic-positive-control"


def ensure_positive_control(cfg: BookConfig, root: Path, progress: bool = False) -> Path | None:
    """The positive control beside the synthetic cohort, generated and trained or reused; its work folder.

    ``None`` (nothing run) when the book runs on an own cohort or ``positive_control`` is off: the
    page then says so. Same size, seed, splits, epochs and training profile as the book
    (:class:`prrt_utils.report.positive_control.PositiveControlConfig`).
    """
    if not cfg.runs_positive_control:
        return None

    pc = PositiveControlConfig(n_patients=cfg.synth_patients, seed=cfg.seed, n_repeats=cfg.n_repeats,
                               n_splits=cfg.n_splits, epochs=cfg.epochs, profile=cfg.profile, device=cfg.device)
    return run_positive_control(pc, root / POSITIVE_CONTROL_DATA, root / cfg.work_dir, n_jobs=cfg.n_jobs,
                                progress=progress)


def ensure_second_centre(cfg: BookConfig, root: Path, progress: bool = True) -> Path | None:
    """The synthetic second centre beside the default synthetic cohort (generated if missing); else ``None``.

    32 patients for the default 116 (fewer for a smaller cohort, at least 16), seed ``seed + 1``.
    """
    if Path(cfg.data_dir) != DEFAULT_SYNTHETIC or not cfg.validation_model:
        return None

    data = (root / SECOND_CENTRE).resolve()
    n = max(16, round(cfg.synth_patients * SynthConfig.second_centre().n_patients / SynthConfig.n_patients))
    synth_cfg = SynthConfig.second_centre(n_patients=n, seed=cfg.seed + 1)
    if not (data / "complete.json").exists():
        log.say("book", f"generating the synthetic second centre ({n} patients) in {data}")
    generate_cohort(synth_cfg, data, progress=progress, n_jobs=cfg.n_jobs)
    return data


def say_done(name: str, seconds: float) -> None:
    """The one line ``make book`` prints for a finished stage or page: its name and its seconds.

    A progress line of the ``prrt.book`` logger (:func:`prrt_utils.io.log.say`): standard output, silenced by ``--quiet``.
    """
    log.say("book", f"{name + ' ':.<64} {seconds:7.1f} s")


def _record(timings: dict[str, float], root: Path, name: str, seconds: float, say: bool = True) -> None:
    timings[name] = round(seconds, 1)
    store.write_json(_executed_dir(root) / "timings.json", timings)
    if say:
        say_done(name, seconds)


def _timings(root: Path) -> dict[str, float]:
    path = _executed_dir(root) / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def train_all(cfg: BookConfig, root: Path, models: Sequence[str], progress: bool = False) -> None:
    """Every fold of every model in ONE pool of workers, with exactly the settings the model pages use.

    Each page would train its own model (starting its own workers, which
    import torch and MONAI, about 15 s a page here); run first, this leaves the
    pages only finished folds to read, and keeps both processes busy across
    models. The pages still call the same :func:`prrt_utils.models.crossval.run_grid`,
    which trains whatever is missing and refuses folds made with other settings.
    """

    specs = [override_ct_init(get_spec(m), cfg.ct_init) for m in models]
    train_cfg = cfg.train_config()
    cv = CVConfig(n_splits=cfg.n_splits, n_repeats=cfg.n_repeats, seed=cfg.seed)
    crossval.run_grid(specs, root / cfg.work_dir, cv, train_cfg, n_jobs=cfg.n_jobs, scheduler=cfg.scheduler or None,
                  progress=progress)


def page_parameters(root: Path, notebook: str, cfg: BookConfig) -> dict[str, Any]:
    """The parameters ``notebook`` runs with in this book: its ``parameters`` cell, overridden (as papermill
    does) by the book's values of the names it declares. A stage that trains for a page uses these, so
    that the page finds exactly what it would have trained."""
    import jupytext

    nb = jupytext.read(root / "notebooks" / f"{notebook}.py")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict[str, Any] = {}
    exec(cell.source, {}, values)  # the repository's own parameters cell: plain assignments
    declared = declared_parameters(nb)
    return {**values, **{k: v for k, v in cfg.parameters().items() if k in declared}}


def train_chapter_models(cfg: BookConfig, root: Path) -> dict[str, float]:
    """The training of the analysis chapters, as stages before the read-only pages; their seconds.

    Chapter 07's survival models (Cox on labs and the Cox CNN, every fold) and chapter 08's final
    model package (after generating the synthetic second centre, when there is another cohort). Each
    is cached, so the pages that follow only read it.
    """

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    p = page_parameters(root, "07_survival", cfg)
    survival.train_survival_stage(root / p["work_dir"], p["censor_fraction"], p["seed"], p["horizon_months"],
                                  p["survival_epochs"], p["n_jobs"])
    seconds["survival models of chapter 07 (trained or reused)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if ensure_second_centre(cfg, root, progress=False) is not None:
        seconds["synthetic second centre (generated or reused)"] = time.perf_counter() - t0
    p = page_parameters(root, "08_validation", cfg)
    other = validation.validation_cohort(root / p["data_dir"], root / p["validation_data"] if p["validation_data"] else "")
    t0 = time.perf_counter()
    if p["validation_model"] and (other / "clinical.csv").is_file():
        final.final_package(root / p["work_dir"], p["validation_model"], profile=p["profile"], seed=p["seed"],
                                 epochs=p["epochs"])
        seconds["final model package of chapter 08 (trained or reused)"] = time.perf_counter() - t0
    return seconds


def _model_pages(cfg: BookConfig, models: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(page, notebook, parameters)`` of each model's page (the ``train_model`` template)."""
    return [(f"train_{m}", TRAIN_TEMPLATE, {**cfg.parameters(), "model": m}) for m in models]


def _execute_page(cfg: BookConfig, root: Path, page: str, notebook: str, params: dict[str, Any]) -> dict[str, float]:
    """Execute one page (in a worker of :func:`execute_pages`)."""
    seconds: dict[str, float] = {}
    seconds[page] = execute_notebook(root / "notebooks" / f"{notebook}.py", _executed_dir(root) / f"{page}.ipynb",
                                     params, root, cfg.kernel)
    return seconds


def execute_pages(cfg: BookConfig, root: Path, pages: Sequence[tuple[str, str, dict[str, Any]]],
                  at_once: int) -> dict[str, float]:
    """Execute independent pages, ``at_once`` at a time, in the order given; record each page's seconds.

    The pages after training only read stored results (no page reads another's
    output), and much of a page is single-threaded (starting a kernel, importing
    torch and MONAI, drawing figures): two at a time keep both cores of a small
    machine busy. Pages that run side by side share the cores, so their seconds
    overlap; :func:`make_book` also records the wall time of the whole group.
    The first page that fails stops the group (pages already running finish,
    none is started) and raises its :class:`BookError`.
    """
    timings = _timings(root)
    if at_once <= 1 or len(pages) <= 1:
        for page in pages:
            for name, sec in _execute_page(cfg, root, *page).items():
                _record(timings, root, name, sec)
        return timings
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: the parent has imported torch for training, and forking a process with its threads is unsafe
    # spawned workers start with an unconfigured logger: they get the parent's level (--quiet, -v)
    level = log.level()
    init: dict[str, Any] = {} if level is None else {"initializer": log.configure_level, "initargs": (level,)}
    with ProcessPoolExecutor(max_workers=at_once, mp_context=multiprocessing.get_context("spawn"), **init) as pool:
        futures = {pool.submit(_execute_page, cfg, root, *page): page[0] for page in pages}
        for fut in as_completed(futures):  # one line per page as it finishes
            if fut.exception() is not None:
                for f in futures:
                    f.cancel()
                raise fut.exception()
            for name, sec in fut.result().items():
                say_done(name, sec)
        for fut in futures:  # in submission order, so timings.json lists the pages in a stable order
            for name, sec in fut.result().items():
                _record(timings, root, name, sec, say=False)
    return timings


def run_models(cfg: BookConfig, root: Path | None = None, models: Sequence[str] | None = None,
               progress: bool = False) -> dict[str, float]:
    """Train (or resume) each model (:func:`train_all`), then execute ``notebooks/train_model.py`` once per model.

    Each executed copy, ``book/executed/train_<model>.ipynb``, is that model's page
    of the book. Returns the seconds of the pages of ``models`` only (``timings.json`` keeps
    every page executed before too).
    """
    root = root or repo_root()
    cfg = resolve_cohort(cfg, root)
    pages = _model_pages(cfg, models or cfg.model_keys)
    _train_timed(cfg, root, models or cfg.model_keys, progress)
    timings = execute_pages(cfg, root, pages, cfg.n_jobs)
    return {page: timings[page] for page, _, _ in pages}


def _train_timed(cfg: BookConfig, root: Path, models: Sequence[str], progress: bool = False) -> None:
    """:func:`train_all`, its seconds recorded in ``timings.json``."""
    t0 = time.perf_counter()
    train_all(cfg, root, models, progress)
    _record(_timings(root), root, "training (all models' folds, one pool of workers)", time.perf_counter() - t0)


def _copy_mathjax(static: Path) -> None:
    """Copy MathJax 3 (es5 build) from the django-static-mathjax wheel so formulas render offline."""
    from importlib.resources import files

    src = Path(str(files("mathjax"))) / "static" / "mathjax" / "es5"
    if not (src / "tex-chtml.js").exists():
        raise BookError(f"MathJax not found at {src}: reinstall the package (pip install -e .)")
    dst = static / "mathjax"
    if (dst / "tex-chtml.js").exists():
        return
    tmp = static / ".mathjax.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    # sre (speech) is loaded only when a reader turns on the accessibility explorer; 'latest.js' would
    # look for a CDN copy: neither is needed offline.
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("sre", "latest.js", "node-main.js"))
    os.replace(tmp, dst)


def build_html(cfg: BookConfig, root: Path | None = None) -> Path:
    """Render the executed notebooks and pages with Jupyter Book 1; return ``_build/html/index.html``.

    The data-source banner (synthetic or own cohort) is written into a copy of
    ``_config.yml`` under ``book/executed/`` so that every page says which
    patients it shows.
    """
    import yaml


    root = root or repo_root()
    executed = _executed_dir(root)
    static = executed / "_static"
    static.mkdir(parents=True, exist_ok=True)
    _copy_mathjax(static)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("html", {})["announcement"] = data_source(root / cfg.data_dir).split(":")[0].replace("`", "")
    config_path = executed / "_config.yml"
    store.write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "--config", str(config_path),
           "--toc", str(root / "_toc.yml"), "--path-output", str(root)]
    log.get_logger("book").debug(f"building the HTML: {' '.join(cmd[1:3])} (its log: book/executed/build.log)")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    build_log = executed / "build.log"
    store.write_text(build_log, proc.stdout + proc.stderr)
    index = root / "_build" / "html" / "index.html"
    if proc.returncode != 0 or not index.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BookError(f"jupyter-book build failed (log: {build_log}):\n{tail}")
    return index


def make_book(cfg: BookConfig | None = None, root: str | Path | None = None, execute: bool = True,
              progress: bool = True) -> Path:
    """The whole book: data, every notebook in order, the HTML. Returns the path of ``index.html``.

    Says one line per stage and per page with its seconds (:func:`say_done`, through the ``prrt``
    logger: ``--quiet`` silences them, ``-v`` adds which notebook runs with which parameters);
    ``progress`` adds tqdm bars (the command line asks for them only on a terminal).
    """
    cfg = cfg or BookConfig()
    root = repo_root(root)
    cfg = resolve_cohort(cfg, root)
    t_start = time.perf_counter()
    if execute:
        timings: dict[str, float] = {}
        store.write_json(_executed_dir(root) / "timings.json", timings)
        t0 = time.perf_counter()
        ensure_data(cfg, root, progress)
        _record(timings, root, "synthetic cohort (generated or reused)", time.perf_counter() - t0)
        for name in DATA_CHAPTERS:
            _record(timings, root, name, execute_notebook(root / "notebooks" / f"{name}.py",
                                                          _executed_dir(root) / f"{name}.ipynb",
                                                          cfg.parameters(), root, cfg.kernel))
        if cfg.has_pretrained_model:

            if not cfg.ct_init and not population_available(root / cfg.data_dir, cfg.pretrain_data_dir):
                # said on the pretraining page and on the model's page, not only here
                log.get_logger("book").warning(
                    "NO CT PRETRAINING POPULATION outside the study: CT pretraining never uses the study's own "
                    "patients, so the pretrained model's CT branch is trained FROM SCRATCH in this run (give a "
                    "separate set with --pretrain-data DIR, or --ct-init PATH)")
                cfg = cfg.replace(ct_init="none")
            _record(timings, root, PRETRAIN_PAGE, execute_notebook(root / "notebooks" / f"{PRETRAIN_PAGE}.py",
                                                                   _executed_dir(root) / f"{PRETRAIN_PAGE}.ipynb",
                                                                   cfg.parameters(), root, cfg.kernel))
        _train_timed(cfg, root, cfg.model_keys, progress)
        t0 = time.perf_counter()
        if ensure_positive_control(cfg, root, progress) is not None:
            _record(_timings(root), root, "positive control (generated, trained or reused)", time.perf_counter() - t0)
        for name, seconds in train_chapter_models(cfg, root).items():
            _record(_timings(root), root, name, seconds)
        # every page from here on only reads what the stages above stored: n_jobs of them at a time,
        # the longest first (the order only changes how well the two cores are kept busy)
        *chapters, last = ANALYSIS_CHAPTERS
        pages = [(name, name, cfg.parameters()) for name in chapters]
        pages = [p for p in pages if p[0] in _LONG_PAGES] + _model_pages(cfg, cfg.model_keys) + \
            [(POSITIVE_CONTROL_PAGE, POSITIVE_CONTROL_PAGE, cfg.parameters())] + \
            [p for p in pages if p[0] not in _LONG_PAGES]
        t0 = time.perf_counter()
        execute_pages(cfg, root, pages, cfg.n_jobs)
        timings = _timings(root)
        _record(timings, root, f"pages above, {cfg.n_jobs} at a time (wall clock)", time.perf_counter() - t0)
        _record(timings, root, last, execute_notebook(root / "notebooks" / f"{last}.py",
                                                      _executed_dir(root) / f"{last}.ipynb",
                                                      cfg.parameters(), root, cfg.kernel))
    t0 = time.perf_counter()
    index = build_html(cfg, root)
    say_done("HTML (Jupyter Book; its log: book/executed/build.log)", time.perf_counter() - t0)
    say_done("the whole book", time.perf_counter() - t_start)
    return index
