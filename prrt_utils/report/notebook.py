"""What every chapter of the book shares: offline figures, the data-source line, the run's facts.

:func:`setup_notebook` is the first call of every notebook. It makes plotly embed
its JavaScript in the notebook (a ``notebook`` renderer without the MathJax CDN tag;
``notebook_connected`` would load plotly.js from a CDN, which an offline reader
cannot reach), which a live notebook needs; for the book, ``prrt book`` drops that
copy from the executed page and the book loads one shared copy from its ``_static``
folder (:func:`prrt_utils.report.book.prepare_for_book`, :mod:`prrt_utils.report.sphinx_plotly`).
It also makes every displayed table a table for readers (:mod:`prrt_utils.report.tables`: no
row-number index, rounded numbers, column names in words) and prints which cohort the chapter ran on, so
that no page of results can be mistaken for the paper's real cohort.

:func:`environment_report` and :func:`data_fingerprint` give the versions, seed
and input hash that the reproducibility page prints.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from prrt_utils.analysis import metrics
from prrt_utils.data.cohort import read_cohort
from prrt_utils.io import store
from prrt_utils.models import stored
from prrt_utils.report.tables import use_reader_tables

__all__ = ["PACKAGES", "ChapterResults", "data_fingerprint", "data_source", "environment_report", "load_results",
           "setup_notebook", "show", "stage_configs"]

#: Distributions whose versions the reproducibility page lists.
PACKAGES = (
    "prrt-pfs", "torch", "monai", "numpy", "scipy", "pandas", "scikit-learn", "lifelines", "pydicom",
    "nibabel", "captum", "umap-learn", "plotly", "papermill", "jupytext", "jupyter-book", "dask",
)


def data_source(data_dir: str | Path) -> str:
    """One sentence naming the cohort in ``data_dir``: synthetic (with its size and seed) or the user's own."""
    data_dir = Path(data_dir)
    complete = data_dir / "complete.json"
    if complete.exists() and json.loads(complete.read_text()).get("generator") == "prrt_utils.synthetic":
        import yaml

        cfg = yaml.safe_load((data_dir / "config.yaml").read_text()) if (data_dir / "config.yaml").exists() else {}
        return (f"Synthetic digital-twin cohort ({cfg.get('n_patients', '?')} simulated patients, "
                f"seed {cfg.get('seed', '?')}): not real patients. Where the paper gives a number for its "
                "real cohort, it is shown beside ours.")
    return f"Own cohort read from `{data_dir.name}`: results are this cohort's, not the paper's."


def _offline_renderer():
    """plotly's ``notebook`` renderer without its MathJax CDN script tag.

    The ``notebook`` renderer embeds plotly.js in the page once (good) but adds
    ``<script src="https://cdnjs...mathjax...">`` to every figure (hard-coded
    ``include_mathjax="cdn"`` in plotly 6-7), which an offline reader cannot
    load and which the browser test catches. The book serves its own MathJax.
    """
    from plotly.io import to_html
    from plotly.io.base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        def to_mimebundle(self, fig_dict):
            html = to_html(fig_dict, config=self.config, auto_play=self.auto_play, include_plotlyjs=False,
                           include_mathjax=False, full_html=False, default_width="100%", default_height=525,
                           validate=False)
            return {"text/html": html}

    return OfflineNotebookRenderer()


def setup_notebook(data_dir: str | Path | None = None) -> None:
    """Configure plotly and pandas for an offline book page; print the data source if ``data_dir`` is given."""
    import plotly.io as pio

    if "prrt_offline" not in pio.renderers:
        pio.renderers["prrt_offline"] = _offline_renderer()
    pio.renderers.default = "prrt_offline"
    pd.set_option("display.max_rows", 200)
    pd.set_option("display.max_columns", 50)
    pd.set_option("display.width", 200)
    use_reader_tables()
    if data_dir is not None:
        from IPython.display import Markdown, display

        display(Markdown(f"**Data:** {data_source(data_dir)}"))


def show(*items: Any) -> None:
    """Display each item in order: a figure with its ``show()``, a string printed, ``None`` not at all, anything
    else with ``display``.

    A chapter's result object returns what a section shows as a tuple; a notebook
    cell is then ``show(*result.section())``.
    """
    from IPython.display import display

    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            print(item)
        elif hasattr(item, "show") and not isinstance(item, (pd.DataFrame, pd.Series)):
            item.show()
        else:
            display(item)


@dataclasses.dataclass(frozen=True)
class ChapterResults:
    """What a results chapter reads first: the stored predictions, their metrics, the truth and ceilings.

    Attributes
    ----------
    models : list of str
        The models asked for, in display order.
    predictions : DataFrame
        :func:`prrt_utils.models.stored.read_results` of ``models`` (every fold finished).
    results : ModelResults
        :func:`prrt_utils.analysis.metrics.evaluate` of ``predictions`` in the order of ``models``.
    truth : DataFrame or None
        :func:`prrt_utils.analysis.metrics.read_truth`: the synthetic cohort's ground truth; ``None`` for an own cohort.
    ceiling : ModelResults or None
        :func:`prrt_utils.analysis.metrics.truth_ceilings` on the same folds; ``None`` without truth.
    names : dict
        Display names of the models (:func:`prrt_utils.analysis.metrics.paper_reference`).
    paper : DataFrame
        The paper's Table 2 (real cohort).
    """

    models: list[str]
    predictions: pd.DataFrame
    results: Any
    truth: pd.DataFrame | None
    ceiling: Any
    names: dict[str, str]
    paper: pd.DataFrame

    @property
    def fold_metrics(self) -> pd.DataFrame:
        """Per-fold metrics of every model (``results.fold_metrics``)."""
        return self.results.fold_metrics

    def name(self, model: str) -> str:
        """The display name of ``model`` (its id when it has none)."""
        return self.names.get(model, model)

    def versus_ceiling(self, results: Any = None, missing: str | None = None) -> pd.DataFrame | str | None:
        """Each model's AUROC against the ceiling of what it sees (:func:`prrt_utils.analysis.metrics.versus_ceiling`).

        ``results`` defaults to :attr:`results`. Without truth (an own cohort) there is no ceiling:
        returns ``missing`` (a sentence to show, or ``None`` to show nothing).
        """

        if self.ceiling is None:
            return missing
        return metrics.versus_ceiling(self.results if results is None else results, self.ceiling)

    def subset(self, models: Sequence[str]) -> Any:
        """:func:`prrt_utils.analysis.metrics.evaluate` of only ``models`` (in that order), from the same predictions."""

        return metrics.evaluate(self.predictions[self.predictions["model"].isin(list(models))], order=list(models))


def load_results(work_dir: str | Path, data_dir: str | Path, models: Sequence[str],
                 ceilings: bool = True) -> ChapterResults:
    """The prelude every results chapter shares: stored predictions, metrics, truth and ceilings of ``models``.

    Parameters
    ----------
    work_dir : path
        ``WORK`` with ``folds.csv`` and ``results/``; nothing is trained.
    data_dir : path
        ``DATA``: its ``ground_truth/truth.csv`` when the cohort is synthetic.
    models : sequence of str
        Models to read; every one must have all its folds (else :class:`prrt_utils.models.stored.GridError`).
    ceilings : bool
        Compute :func:`prrt_utils.analysis.metrics.truth_ceilings` when the truth exists (a few seconds of fitting).

    Returns
    -------
    ChapterResults
    """

    models = list(models)
    names, paper = metrics.paper_reference()
    predictions = stored.read_results(work_dir, models)
    truth = metrics.read_truth(data_dir)
    ceiling = (metrics.truth_ceilings(predictions, truth, read_cohort(work_dir))
               if ceilings and truth is not None else None)
    return ChapterResults(models=models, predictions=predictions, results=metrics.evaluate(predictions, order=models),
                          truth=truth, ceiling=ceiling, names=names, paper=paper)


def environment_report() -> pd.DataFrame:
    """Python, platform and the versions of :data:`PACKAGES` (``not installed`` where absent)."""
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    try:
        import torch

        rows.append(("torch device", "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"))
        rows.append(("torch threads", str(torch.get_num_threads())))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return pd.DataFrame(rows, columns=["component", "version"])


def data_fingerprint(data_dir: str | Path) -> pd.DataFrame:
    """SHA-256 of the inputs the pipeline read: the clinical table and the whole imaging tree.

    The imaging hash covers every file's relative path and bytes, so any change to
    any slice changes it; names of patients never enter it.
    """
    data_dir = Path(data_dir)
    rows = []
    clinical = data_dir / "clinical.csv"
    if clinical.exists():
        rows.append(("clinical.csv", store.sha256_file(clinical)))
    imaging = data_dir / "imaging"
    if imaging.exists():
        rows.append(("imaging/", store.sha256_tree(imaging)))
    return pd.DataFrame(rows, columns=["input", "sha256"])


def stage_configs(work_dir: str | Path) -> pd.DataFrame:
    """Every ``config.yaml``/``model.yaml``/``train.yaml`` a stage wrote under ``work_dir``, as (file, text)."""
    work_dir = Path(work_dir)
    rows = []
    for pattern in ("*/config.yaml", "results/*/model.yaml", "results/*/train.yaml", "folds.json"):
        for path in sorted(work_dir.glob(pattern)):
            rows.append((str(path.relative_to(work_dir)), path.read_text().strip()))
    return pd.DataFrame(rows, columns=["file", "content"])
