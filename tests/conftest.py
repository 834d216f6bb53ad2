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


@pytest.fixture(autouse=True)
def _prrt_logger_as_it_was():
    """Each test leaves the ``prrt`` logger as it found it: ``cli.main`` configures it (handlers, level, no
    propagation), and a later test reading ``caplog`` must still receive the project's records."""
    import logging

    logger = logging.getLogger("prrt")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


#: Tests measured at more than half a minute that carry no ``slow`` mark (they stay in ``make test-fast``):
#: started first with the end-to-end ones, so that none of them begins last while the other worker has
#: nothing left to do. A name that no longer matches only loses its place at the front.
LONG_UNMARKED = (
    "test_cohort.py::test_fisher_freeman_halton_equals_exact_references",
    "test_grid.py::test_local_processes_and_a_dask_cluster_give_the_same_predictions_as_one_process",
    "test_metrics.py::test_comparison_power_leaves_out_a_draw_that_cannot_be_split",
    "test_training.py::test_with_labels_unrelated_to_the_inputs_every_family_is_at_chance",
    "test_training.py::test_inner_predictions_are_of_training_patients_the_folds_own_model_was_not_fitted_on",
)
#: Modules whose module-scoped fixtures take about a second to make: their tests are not held in one worker.
CHEAP_MODULE_FIXTURES = ("tests/test_training.py",)


def _group(item: pytest.Item) -> str | None:
    """The pytest-xdist group of a test: ``book`` for the built book, its module for a module-scoped fixture."""
    names = getattr(item, "fixturenames", ())
    if "built_book" in names:
        return "book"
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    module = item.nodeid.split("::")[0]
    if module not in CHEAP_MODULE_FIXTURES and any(
            defs.get(n) and defs[n][-1].scope in ("package", "module", "class") for n in names):
        return module
    return None


def _priority(item: pytest.Item) -> int:
    if item.get_closest_marker("slow") or item.nodeid.endswith(LONG_UNMARKED):
        return 1
    return 2


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Schedule the suite for pytest-xdist (``--dist loadgroup --no-loadscope-reorder``, pyproject.toml).

    * Every test that reads the built book runs in one worker, so the book is built once.
    * The tests of a module that share a module-scoped fixture run in one worker, so the fixture is made
      once (it was made in both workers when its tests were split between them).
    * The longest work is sent first (the book, then the end-to-end and long tests, then the rest in
      collection order), so the two workers finish together instead of one idling at the end.
    """
    groups = {id(item): _group(item) for item in items}
    rank: dict[str, int] = {}
    for item in items:
        g = groups[id(item)]
        if g is not None:
            rank[g] = min(rank.get(g, 2), 0 if g == "book" else _priority(item))
    for item in items:
        if groups[id(item)] is not None:
            item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda it: (rank[groups[id(it)]] if groups[id(it)] else _priority(it), order[id(it)]))


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a temporary project whose book was built end to end; ``_build/html`` holds the pages.

    ``PRRT_BUILT_BOOK=/path/to/root`` reuses a book built before (by this fixture or ``prrt book``),
    to rerun the tests that read it without rebuilding.
    """
    import os

    from prrt_utils.report.book import BookConfig, make_book

    if os.environ.get("PRRT_BUILT_BOOK"):
        return Path(os.environ["PRRT_BUILT_BOOK"])
    root = tmp_path_factory.mktemp("book")
    for name in BOOK_SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("executed", "*.ipynb", "__pycache__"))
        else:
            shutil.copy2(src, root / name)
    # n_jobs=2 as make book runs it: the folds in a pool of two workers, the pages after training two at a time
    cfg = BookConfig(synth_patients=21, n_repeats=2, n_splits=3, epochs=2, n_jobs=2, seed=0, pretrain_patients=12,
                     pretrain_epochs=5)
    make_book(cfg, root=root, progress=False)
    return root


class OfflineBrowser:
    """Headless Debian chromium that aborts and records every request not to a local file."""

    ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"]

    def __init__(self, playwright_api, chromium: str) -> None:
        self.external: list[str] = []
        self.errors: list[str] = []
        self._p = playwright_api.sync_playwright().start()
        self.browser = self._p.chromium.launch(executable_path=chromium, args=self.ARGS)
        context = self.browser.new_context()
        context.route("**/*", self._route)
        self.page = context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, r) -> None:
        if r.request.url.startswith(("file://", "data:", "blob:", "about:")):
            r.continue_()
        else:
            self.external.append(r.request.url)
            r.abort()

    def open(self, path: Path):
        self.page.goto(Path(path).as_uri())
        self.page.wait_for_load_state("load")
        return self.page

    def assert_clean(self, tolerated: tuple[str, ...] = ()) -> None:
        assert self.external == [], f"pages requested external URLs: {sorted(set(self.external))}"
        errors = [e for e in self.errors if not any(t in e for t in tolerated)]
        assert errors == [], f"JavaScript errors: {errors}"

    def close(self) -> None:
        self.browser.close()
        self._p.stop()


@pytest.fixture()
def offline_browser():
    """An :class:`OfflineBrowser` (skips where playwright or Debian's chromium is missing)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    b = OfflineBrowser(playwright_api, chromium)
    yield b
    b.close()
