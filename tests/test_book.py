"""The book runner: papermill execution of jupytext sources, atomic pages, and the built HTML in a browser."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from prrt_utils.report.book import BookConfig, BookError, execute_notebook, execute_pages

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


PAGE = textwrap.dedent(
    '''\
    # %% [markdown]
    # # A chapter

    # %% tags=["parameters"]
    x = 1

    # %%
    from prrt_utils.report.notebook import setup_notebook

    setup_notebook()

    # %%
    import plotly.graph_objects as go

    print("opening line", x)

    # %% [markdown]
    # ## A result

    # %%
    import math

    # %%
    go.Figure(go.Scatter(x=[1, 2], y=[3, x])).show()

    # %% tags=["show-input"]
    print("shown on purpose")
    '''
)


def test_an_executed_page_shows_results_with_its_code_folded_and_no_parameters_cell(tmp_path: Path, capfd):
    import nbformat

    (tmp_path / "page.py").write_text(PAGE)
    out = tmp_path / "page.ipynb"
    execute_notebook(tmp_path / "page.py", out, {"x": 7}, cwd=tmp_path)
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    assert tags == [
        ["parameters", "remove-cell"],           # declared values: papermill's injected cell holds the ones used
        ["injected-parameters", "remove-cell"],  # so the parameters never appear twice
        ["remove-input"],                        # setup_notebook: its data-source line stays, its code goes
        ["remove-input"],                        # the rest of the opening setup block
        ["remove-input"],                        # a cell of imports only
        ["hide-input"],                          # a result: code one click away
        ["show-input"],                          # a cell that asks to keep its code visible keeps it
    ]
    assert "opening line 7" in _outputs(out)
    from prrt_utils.report.book import fold_code

    assert [c.metadata["tags"] for c in fold_code(nb).cells if c.cell_type == "code"] == tags  # idempotent
    # the page carries its figure, not plotly.js: the book loads the library once from _static
    html = "".join(o.get("data", {}).get("text/html", "") for c in code for o in c.get("outputs", []))
    assert "Plotly.newPlot" in html
    assert "plotly.js v" not in html and out.stat().st_size < 100_000
    # and the terminal shows none of the kernel's own log lines
    assert "without encryption" not in capfd.readouterr().err


def test_the_plotly_library_is_recognised_exactly_as_plotlys_renderer_writes_it():
    import plotly.io as pio
    from nbformat.v4 import new_output
    from plotly.offline import get_plotlyjs

    from prrt_utils.report.book import _is_plotly_library

    # what plotly's notebook renderer displays before the first figure (NotebookRenderer.activate)
    library = f"<script>window.PlotlyConfig = {{}};</script>\n<script>{get_plotlyjs()}</script>"
    assert _is_plotly_library(new_output("display_data", data={"text/html": library}))
    figure = pio.to_html({"data": [{"type": "scatter", "y": list(range(20_000))}]}, include_plotlyjs=False,
                         full_html=False)
    assert len(figure) > 100_000  # a large figure, so only the library's own header tells them apart
    assert not _is_plotly_library(new_output("display_data", data={"text/html": figure}))


def test_make_book_prints_one_aligned_line_per_stage_with_its_seconds(capsys):
    from prrt_utils.io.log import configure
    from prrt_utils.report.book import say_done

    configure()  # as `prrt book` does: the lines are the prrt logger's, on standard output
    say_done("01_cohort", 12.34)
    say_done("training (all models' folds, one pool of workers)", 65.6)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("01_cohort .") and lines[0].endswith("12.3 s")
    assert len({len(line) for line in lines}) == 1, "the seconds line up in one column"
    assert "\r" not in "".join(lines)


def test_stage_lines_and_generator_messages_go_through_the_prrt_logger_quiet_silences_them_v_adds_detail(
    tmp_path, capsys
):
    from prrt_utils import cli
    from prrt_utils.io import log
    from prrt_utils.report.book import say_done

    log.configure(quiet=True)
    say_done("01_cohort", 12.34)
    log.get_logger("book").warning("NO CT PRETRAINING POPULATION outside the study")
    said = capsys.readouterr()
    assert said.out == "" and "NO CT PRETRAINING" in said.err  # warnings stay, on stderr
    log.configure()
    say_done("01_cohort", 12.34)
    said = capsys.readouterr()
    assert said.out.startswith("01_cohort .") and said.err == ""
    # the generator: -v says each patient, --quiet only the command's result line
    out = tmp_path / "syn"
    args = ["synth", "--n", "2", "--format", "nifti", "--out", str(out), "--jobs", "1"]
    assert cli.main([*args, "-v"]) == 0
    said = capsys.readouterr()
    assert "patient PRRT-001 written" in said.err and "writing 2" in said.err
    assert said.out.startswith("synthetic cohort of 2 patients")
    assert cli.main([*args, "--quiet"]) == 0
    said = capsys.readouterr()
    assert said.err == "" and said.out.startswith("synthetic cohort of 2 patients")
    assert cli.main([*args, "-v"]) == 0
    assert "found complete" in capsys.readouterr().err  # reused, and -v says so


def test_progress_bars_are_shown_only_on_a_terminal(monkeypatch):
    import argparse
    import io

    from prrt_utils import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = argparse.Namespace(quiet=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # make book > build.log 2>&1
    assert cli._progress(args) is False
    monkeypatch.setattr("sys.stderr", Terminal())
    assert cli._progress(args) is True
    assert cli._progress(argparse.Namespace(quiet=True)) is False


def test_book_config_rejects_an_unknown_error_policy():
    with pytest.raises(BookError, match="on_error"):
        BookConfig(on_error="ignore")
    with pytest.raises(BookError, match="pretrain_epochs"):
        BookConfig(pretrain_epochs=-1)
    assert BookConfig(pretrain_epochs=5).parameters()["pretrain_epochs"] == 5  # the pretraining page declares it


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


SCREENSHOTS = ROOT / "work" / "screenshots"  # kept after the run, so a reviewer can look without building


def _book_pages(html: Path) -> list[Path]:
    """The book's own pages (not the files in _static, such as the example patient report)."""
    return [p for p in sorted(html.rglob("*.html")) if "_static" not in p.relative_to(html).parts]


@pytest.mark.slow
def test_plotly_js_is_shipped_once_and_the_book_stays_small(built_book: Path):
    html = built_book / "_build" / "html"
    library = html / "_static" / "plotly.min.js"
    assert library.stat().st_size > 1_000_000
    with_figures = 0
    for p in _book_pages(html):
        text = p.read_text()
        assert not re.search(r"\*\s*plotly\.js v\d", text), f"{p.name} embeds plotly.js"
        if "Plotly.newPlot" in text:
            with_figures += 1
            src = re.findall(r'<script src="([^"?]*plotly\.min\.js)(?:\?v=\w+)?"', text)  # a plain, blocking tag
            assert len(src) == 1 and (p.parent / src[0]).resolve() == library.resolve(), p.name
    assert with_figures >= 10
    size = sum(f.stat().st_size for f in html.rglob("*") if f.is_file())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "book_size.txt").write_text(f"{size / 1e6:.1f} MB in {html}\n")
    print(f"built book: {size / 1e6:.1f} MB")
    assert size < 60e6, f"the built book is {size / 1e6:.0f} MB"


@pytest.mark.slow
def test_chapters_show_no_parameters_cell_and_no_visible_code(built_book: Path):
    html = built_book / "_build" / "html" / "book" / "executed"
    for name in ("01_cohort", "02_preprocessing", "03_unimodal", "06_explainability", "train_pet_fusion"):
        text = (html / f"{name}.html").read_text()
        assert "tag_parameters" not in text and "tag_injected-parameters" not in text, name
        inputs = text.count('class="cell_input')
        folded = len(re.findall(r'<details class="[^"]*hide above-input">\s*<summary[^>]*>.*?</summary>\s*'
                                r'<div class="cell_input', text, flags=re.S))
        assert inputs > 0 and folded == inputs, f"{name}: {inputs - folded} of {inputs} code cells are not folded"


def _row_number_tables(text: str) -> int:
    """Tables whose index only numbers the rows: integers as every row's header and no name for that index.

    A named integer index (``repeat``, ``fold``) is data and allowed: pandas' Styler marks its name
    ``index_name``, pandas' own HTML puts it first in a second header row.
    """
    count = 0
    for table in re.findall(r"<table.*?</table>", text, flags=re.S):
        head, _, body = table.partition("</thead>")
        rows = re.findall(r"<tr[^>]*>\s*<th[^>]*>(.*?)</th>", body, flags=re.S)
        header_rows = re.findall(r"<tr[^>]*>\s*<th[^>]*>(.*?)</th>", head, flags=re.S)
        named = "index_name" in head or any(h.strip() not in ("", "&nbsp;") for h in header_rows[1:])
        if rows and all(r.strip().isdigit() for r in rows) and not named:
            count += 1
    return count


@pytest.mark.slow
def test_the_answer_comes_first_every_chapter_opens_with_key_findings_and_no_table_numbers_its_rows(
        built_book: Path):
    html = built_book / "_build" / "html"
    intro = (html / "book" / "intro.html").read_text()
    following = re.search(r'<a class="right-next"\s+href="([^"]+)"', intro)
    assert following and following.group(1).endswith("executed/00_summary.html"), "the answer is not the second page"
    summary = (html / "book" / "executed" / "00_summary.html").read_text()
    assert "The answer" in summary and "corrected resampled t-test" in summary and "Plotly.newPlot" in summary
    assert "Bayes ceiling" in summary  # the synthetic cohort: every model against the best possible
    for name in ("01_cohort", "02_preprocessing", "03_unimodal", "04_fusion", "05_statistics", "06_explainability",
                 "07_survival", "08_validation"):
        text = (html / "book" / "executed" / f"{name}.html").read_text()
        box = text.find("Key findings")
        assert box > 0, f"{name}: no key findings box"
        assert box < text.find('class="cell_output'), f"{name}: the key findings come after a result"
    offenders = {p.name: n for p in _book_pages(html) if (n := _row_number_tables(p.read_text()))}
    assert not offenders, f"tables with a row-number index: {offenders}"


@pytest.mark.slow
@pytest.mark.browser
def test_code_is_folded_and_images_can_be_explored_without_a_kernel(built_book: Path, offline_browser):
    html = built_book / "_build" / "html"
    page = offline_browser.page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # the answer, second page of the book: its figure drawn offline (a screenshot for a reviewer)
    offline_browser.open(html / "book" / "executed" / "00_summary.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    assert page.locator(".admonition", has_text="The answer").first.is_visible()
    assert page.evaluate("() => document.querySelector('.js-plotly-plot').data.length") >= 3
    page.screenshot(path=str(SCREENSHOTS / "00_summary.png"), full_page=True)

    offline_browser.open(html / "book" / "executed" / "03_unimodal.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    assert page.evaluate("() => typeof Plotly") == "object"
    assert page.evaluate("() => [...document.scripts].filter(s => /_static\\/plotly\\.min\\.js(\\?|$)/.test(s.src)).length") == 1
    inputs = page.locator(".cell_input")
    assert inputs.count() > 0
    assert not any(inputs.nth(i).is_visible() for i in range(inputs.count())), "a code cell is visible"
    toggle = page.locator("details.above-input summary").first
    toggle.click()
    assert page.locator("details.above-input .cell_input").first.is_visible(), "the toggle does not show the code"
    page.screenshot(path=str(SCREENSHOTS / "03_unimodal.png"), full_page=False)

    # chapter 06: the slice viewer's slider and plane buttons redraw the image, in static HTML
    offline_browser.open(html / "book" / "executed" / "06_explainability.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    index = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].findIndex(g => (g.layout.sliders || []).length === 3)")
    assert index >= 0, "no slice viewer on the explainability page"
    viewer = page.locator(".js-plotly-plot").nth(index)
    viewer.scroll_into_view_if_needed()
    state = ("i => { const g = document.querySelectorAll('.js-plotly-plot')[i]; return {source: g.data[0].source, "
             "visible: g.layout.sliders.map(s => s.visible), images: g.querySelectorAll('.main-svg image').length}; }")
    before = page.evaluate(state, index)
    assert before["images"] >= 2, "the PET and a saliency overlay are drawn"
    rail = viewer.locator(".slider-container .slider-rail-touch-rect").first
    box = rail.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.15, box["y"] + box["height"] / 2)
    page.wait_for_timeout(300)
    moved = page.evaluate(state, index)
    assert moved["source"] != before["source"], "the slider did not change the drawn slice"
    viewer.locator(".updatemenu-button", has_text="coronal").click()
    page.wait_for_timeout(300)
    coronal = page.evaluate(state, index)
    assert coronal["visible"] == [False, True, False] and coronal["source"] != moved["source"]
    viewer.screenshot(path=str(SCREENSHOTS / "06_slice_viewer.png"))

    # chapter 02: the QC browser shows another patient when one is chosen from its menu
    offline_browser.open(html / "book" / "executed" / "02_preprocessing.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    index = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].findIndex(g => "
                          "(g.layout.updatemenus || []).some(m => m.name === 'patient'))")
    assert index >= 0, "no QC browser on the preprocessing page"
    qc = page.locator(".js-plotly-plot").nth(index)
    qc.scroll_into_view_if_needed()
    state = "i => { const g = document.querySelectorAll('.js-plotly-plot')[i]; return [g.data[0].source, g.layout.title.text]; }"
    before = page.evaluate(state, index)
    qc.locator(".updatemenu-header-group").first.click()
    qc.locator(".updatemenu-dropdown-button").nth(1).click()
    page.wait_for_timeout(300)
    after = page.evaluate(state, index)
    assert after[0] != before[0] and after[1] != before[1], "choosing another patient did not change the images"
    qc.screenshot(path=str(SCREENSHOTS / "02_qc_browser.png"))

    # the glossary: the introduction links its first terms to their entries
    offline_browser.open(html / "book" / "intro.html")
    link = page.locator("a[href*='glossary.html#term-Bayes-ceiling']").first
    link.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("glossary.html#term-Bayes-ceiling")
    assert page.locator("dl.glossary dt#term-Bayes-ceiling").is_visible()
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

    from prrt_utils.report.book import declared_parameters

    for path in sorted((ROOT / "notebooks").glob("*.py")):
        nb = jupytext.read(path)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(declared_parameters(nb)) == len(lines), path.name
    nb = jupytext.reads('# %% tags=["parameters"]\nct_init = ""  # empty = as declared; none = scratch\n', fmt="py:percent")
    assert declared_parameters(nb) == {"ct_init"}  # papermill's parser drops this line


def _glossary_terms() -> set[str]:
    text = (ROOT / "book" / "glossary.md").read_text()
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, flags=re.S)
    assert block, "book/glossary.md has no {glossary} directive"
    return {line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith(" ")}


def test_the_glossary_is_a_page_of_the_book_and_every_term_link_names_one_of_its_terms():
    terms = _glossary_terms()
    assert {"AUROC", "AUPRC", "Bayes ceiling", "SUVbw", "Cliff's delta", "corrected resampled t-test", "C-index",
            "net benefit", "Kaplan-Meier", "hazard ratio", "Jensen-Shannon distance", "DeLong test"} <= terms
    assert "book/glossary" in (ROOT / "_toc.yml").read_text()
    sources = [*sorted((ROOT / "book").glob("*.md")), *sorted((ROOT / "notebooks").glob("*.py"))]
    links = []
    for path in sources:
        for target in re.findall(r"\{term\}`([^`]+)`", path.read_text()):
            name = re.search(r"<([^>]+)>$", target)  # {term}`shown words <term>`
            links.append((path.name, (name.group(1) if name else target).strip()))
    assert {name for name, _ in links} >= {"intro.md"}, "the introduction links its first terms"
    unknown = [(page, t) for page, t in links if t not in terms]
    assert not unknown, f"{{term}} links to terms the glossary does not define: {unknown}"


def test_page_parameters_are_the_cells_values_overridden_by_the_books_for_the_names_it_declares():
    from prrt_utils.report.book import page_parameters, repo_root

    cfg = BookConfig(seed=5, n_jobs=3, epochs=7)
    p = page_parameters(repo_root(), "07_survival", cfg)
    assert (p["seed"], p["n_jobs"], p["censor_fraction"], p["survival_epochs"]) == (5, 3, 0.3, 0)
    assert "epochs" not in p  # chapter 07 does not declare the book's epochs
    assert page_parameters(repo_root(), "08_validation", cfg)["epochs"] == 7


def test_the_chapters_training_runs_as_stages_with_the_pages_own_parameters(tmp_path, monkeypatch):
    from prrt_utils.analysis import validation
    from prrt_utils.models import final, survival
    from prrt_utils.report import book

    root = book.repo_root()
    calls = {}
    monkeypatch.setattr(survival, "train_survival_stage", lambda *a: calls.setdefault("survival", a))
    monkeypatch.setattr(final, "final_package", lambda *a, **k: calls.setdefault("package", (a, k)))
    monkeypatch.setattr(book, "ensure_second_centre", lambda cfg, root, progress: None)
    monkeypatch.setattr(validation, "validation_cohort", lambda data_dir, other: tmp_path)
    cfg = BookConfig(seed=3, n_jobs=2, epochs=4, work_dir="w")
    seconds = book.train_chapter_models(cfg, root)
    assert calls["survival"] == (root / "w", 0.3, 3, 12.0, 0, 2)
    assert "package" not in calls and list(seconds) == ["survival models of chapter 07 (trained or reused)"]
    (tmp_path / "clinical.csv").write_text("patient_id\n")
    seconds = book.train_chapter_models(cfg, root)
    assert calls["package"] == ((root / "w", "pet_fusion"), {"profile": "default", "seed": 3, "epochs": 4})
    assert "final model package of chapter 08 (trained or reused)" in seconds
