"""No planted identifying string reaches a page, log, results file or checkpoint of a full build.

The synthetic generator writes fake names, birth dates, hospital ids, accession
numbers and DICOM UIDs into the headers and lists every one of them in
``ground_truth/phi.json``. This test scans every byte the pipeline wrote (the
built HTML, the executed notebooks, the build log, every file of the work
directory) for each of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


def _needles(data_dir: Path) -> list[bytes]:
    phi = json.loads((data_dir / "ground_truth" / "phi.json").read_text())
    assert len(phi) > 50, "the generator should plant many identifying strings"
    return [s.encode() for s in phi if len(s) >= 4]


def _pattern(needles: list[bytes]) -> re.Pattern[bytes]:
    # digit strings (dates, ids, UIDs) must not be part of a longer number; names must be whole words
    parts = [rb"(?<![0-9A-Za-z.])" + re.escape(n) + rb"(?![0-9A-Za-z])" for n in needles]
    return re.compile(b"|".join(parts))


def test_the_scanner_finds_a_planted_name_date_and_uid(tmp_path: Path):
    needles = [b"Kirchleitner^Algernon", b"19490321", b"1.2.826.0.1.3680043.8.498.1234"]
    pattern = _pattern(needles)
    assert pattern.search(b'{"name": "Kirchleitner^Algernon"}')
    assert pattern.search(b"born 19490321.")
    assert pattern.search(b"uid=1.2.826.0.1.3680043.8.498.1234 ")
    assert not pattern.search(b"x=1194903215")  # part of a longer number is not a birth date


@pytest.mark.slow
def test_no_identifying_string_reaches_any_output_of_the_book(built_book: Path):
    pattern = _pattern(_needles(built_book / "data" / "synthetic"))
    scanned, hits = 0, []
    for folder in (built_book / "_build", built_book / "book" / "executed", built_book / "work"):
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            scanned += 1
            m = pattern.search(path.read_bytes())
            if m:
                hits.append(f"{path.relative_to(built_book)}: {m.group().decode(errors='replace')}")
    assert scanned > 100
    assert hits == [], "identifying data leaked:\n" + "\n".join(hits[:20])
