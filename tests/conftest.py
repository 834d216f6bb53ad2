"""Shared fixtures: one small end-to-end build of the whole book, made once per test session.

The build runs the real pipeline the README's ``make book`` runs (synthetic DICOM
export, cohort, preprocessing, all seven models under repeated cross-validation,
every chapter, Jupyter Book) on a small cohort with few epochs, in a temporary
copy of the book's sources, so that the browser and privacy tests check pages
that were actually produced by the code, in a couple of minutes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK_SOURCES = ("_config.yml", "_toc.yml", "notebooks", "book", "models")


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a temporary project whose book was built end to end; ``_build/html`` holds the pages."""
    from prrt_utils.book import BookConfig, make_book

    root = tmp_path_factory.mktemp("book")
    for name in BOOK_SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("executed", "*.ipynb", "__pycache__"))
        else:
            shutil.copy2(src, root / name)
    # n_jobs=1: folds train inside each page's kernel, sparing two worker start-ups (torch + MONAI imports) per page
    cfg = BookConfig(synth_patients=21, n_repeats=2, n_splits=3, epochs=2, n_jobs=1, seed=0)
    make_book(cfg, root=root, progress=False)
    return root
