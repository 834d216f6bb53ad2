"""The book runner: papermill execution of jupytext sources, atomic pages, and the built HTML in a browser."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from prrt_utils.book import BookConfig, BookError, execute_notebook, execute_pages

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOK = textwrap.dedent(
    '''\
    # %% tags=["parameters"]
    x = 1
    fail = False

    # %%
    if fail:
        raise ValueError("planted failure")
    print("x is", x)
    '''
)


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    path = tmp_path / "nb.py"
    path.write_text(NOTEBOOK)
    return path


def _outputs(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_a_jupytext_source_is_executed_with_the_parameters_it_declares(notebook: Path, tmp_path: Path):
    out = tmp_path / "executed" / "nb.ipynb"
    execute_notebook(notebook, out, {"x": 42, "not_declared": "ignored"}, cwd=tmp_path)
    text = _outputs(out)
    assert "x is 42" in text
    assert "not_declared" not in out.read_text()
    assert notebook.read_text() == NOTEBOOK, "papermill must never write back into the .py source"


def test_a_failing_notebook_names_the_cell_and_leaves_no_page_that_looks_whole(notebook: Path, tmp_path: Path):
    out = tmp_path / "executed" / "nb.ipynb"
    with pytest.raises(BookError, match=r"nb\.py failed in the cell beginning 'if fail:': ValueError: planted failure"):
        execute_notebook(notebook, out, {"fail": True}, cwd=tmp_path)
    assert not out.exists()
    assert out.with_suffix(".failed.ipynb").exists()
    execute_notebook(notebook, out, {}, cwd=tmp_path)  # a later success replaces the failed copy
    assert out.exists() and not out.with_suffix(".failed.ipynb").exists()


def test_pages_run_side_by_side_and_a_failing_one_stops_the_group_with_its_name(tmp_path: Path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "nb.py").write_text(NOTEBOOK)
    cfg = BookConfig(work_dir=str(tmp_path / "work"))
    pages = [(f"p{i}", "nb", {"x": i}) for i in range(3)]
    timings = execute_pages(cfg, tmp_path, pages, at_once=2)
    for i in range(3):
        assert f"x is {i}" in _outputs(tmp_path / "book" / "executed" / f"p{i}.ipynb")
    assert [k for k in timings if k.startswith("p")] == ["p0", "p1", "p2"]
    bad = [("ok", "nb", {}), ("broken", "nb", {"fail": True})]
    with pytest.raises(BookError, match=r"nb\.py failed .*planted failure.*broken\.failed\.ipynb"):
        execute_pages(cfg, tmp_path, bad, at_once=2)
    assert not (tmp_path / "book" / "executed" / "broken.ipynb").exists()


def test_book_config_rejects_an_unknown_error_policy():
    with pytest.raises(BookError, match="on_error"):
        BookConfig(on_error="ignore")


def test_every_page_of_the_table_of_contents_has_a_source():
    root = Path(__file__).resolve().parent.parent
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries:
            files.append(e["file"])
            walk(e.get("sections", []))

    for part in toc["parts"]:
        walk(part["chapters"])
    for f in files:
        if f.startswith("book/executed/train_"):
            assert (root / "models" / f"{f.removeprefix('book/executed/train_')}.yaml").exists(), f
        elif f.startswith("book/executed/"):
            assert (root / "notebooks" / f"{Path(f).name}.py").exists(), f
        else:
            assert (root / f"{f}.md").exists(), f


def test_notebooks_are_percent_format_with_one_parameters_cell():
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "notebooks").glob("*.py")):
        text = path.read_text()
        assert "format_name: percent" in text, path.name
        assert len(re.findall(r'^# %% tags=\["parameters"\]', text, flags=re.M)) == 1, path.name
        assert "setup_notebook(" in text, path.name


# --------------------------------------------------------------------------- the built book


def _pages(root: Path) -> list[Path]:
    return sorted((root / "_build" / "html").rglob("*.html"))


@pytest.mark.slow
def test_the_book_builds_end_to_end_with_every_chapter(built_book: Path):
    html = built_book / "_build" / "html"
    assert (html / "index.html").exists()
    for name in ("01_cohort", "02_preprocessing", "pretrain_ct", "03_unimodal", "04_fusion", "05_statistics",
                 "06_explainability", "07_survival", "90_reproducibility", "train_pet_fusion"):
        page = html / "book" / "executed" / f"{name}.html"
        assert page.exists(), name
        assert "Traceback (most recent call last)" not in page.read_text(), name
    import nbformat

    for nb_path in (built_book / "book" / "executed").glob("*.ipynb"):
        nb = nbformat.read(nb_path, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{nb_path.name} has error outputs"
    assert not list((built_book / "book" / "executed").glob("*.failed.ipynb"))
    assert "Synthetic digital-twin cohort" in (html / "book" / "intro.html").read_text(), "the data-source banner is missing"


@pytest.mark.slow
@pytest.mark.browser
def test_pages_draw_figures_tables_and_formulas_offline_without_any_external_request(built_book: Path,
                                                                                    offline_browser):
    html = built_book / "_build" / "html"
    page = offline_browser.page

    def open_page(rel: str):
        offline_browser.open(html / rel)

    open_page("book/executed/03_unimodal.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    n_plots = page.locator(".js-plotly-plot").count()
    assert n_plots >= 2
    drawn = page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(d => d.querySelectorAll('.main-svg path, .main-svg .point').length)"
    )
    assert all(n > 0 for n in drawn), f"some plotly figures have no marks: {drawn}"
    open_page("book/executed/01_cohort.html")
    box = page.locator("table").first.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50, "the cohort table is not drawn"
    assert page.locator("table tbody tr").count() > 10
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    open_page("book/synthetic_cohort.html")
    page.wait_for_selector("mjx-container", timeout=20000)
    assert page.locator("mjx-container").count() > 3, "formulas are not typeset"
    open_page("book/executed/pretrain_ct.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)  # the loss curve of CT pretraining
    open_page("book/executed/06_explainability.html")
    page.screenshot(path=str(built_book / "06_explainability.png"), full_page=False)
    # every other page of the book too: one widget output, say, would load its manager from a CDN
    pages = sorted(html.rglob("*.html"))
    assert len(pages) > 20
    for p in pages:
        offline_browser.open(p)
    # sphinx-thebe (loaded by Jupyter Book 1 even with launch buttons off) includes its script twice, and
    # the second copy's `const THEBE_JS_URL` throws; thebe is unused here, so that one error is tolerated
    offline_browser.assert_clean(tolerated=("THEBE_JS_URL",))


def test_the_tripod_page_lists_every_item_and_links_only_to_pages_that_exist():
    page = (ROOT / "book" / "tripod.md").read_text()
    items = set(re.findall(r"^\| (\d+)[a-f]?(?:–\d+[a-f])? \|", page, flags=re.M))
    assert items == {str(i) for i in range(1, 28)}
    toc = (ROOT / "_toc.yml").read_text()
    for target in set(re.findall(r"\]\(([^)#]+)\)", page)):
        if "executed" in target:  # an executed notebook: its source is notebooks/<name>.py
            source = ROOT / "notebooks" / Path(target).with_suffix(".py").name
        else:
            source = ROOT / "book" / target
        assert source.exists(), target
        assert f"book/{Path(target).with_suffix('').as_posix()}" in toc, f"{target} is not a page of the book"


def test_every_parameter_a_notebook_declares_is_seen_and_comments_cannot_hide_one():
    import jupytext

    from prrt_utils.book import declared_parameters

    for path in sorted((ROOT / "notebooks").glob("*.py")):
        nb = jupytext.read(path)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(declared_parameters(nb)) == len(lines), path.name
    nb = jupytext.reads('# %% tags=["parameters"]\nct_init = ""  # empty = as declared; none = scratch\n', fmt="py:percent")
    assert declared_parameters(nb) == {"ct_init"}  # papermill's parser drops this line
