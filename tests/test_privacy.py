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


def _needles(data_dir: Path) -> set[bytes]:
    phi = json.loads((data_dir / "ground_truth" / "phi.json").read_text())
    assert len(phi) > 50, "the generator should plant many identifying strings"
    return {s.encode() for s in phi if len(s) >= 4}


# Tokens: runs of letters, digits and the characters DICOM values use inside names, ids and UIDs. A needle
# must be a whole token (or a ^-separated part of one), so a date inside a longer number is not a hit.
# Looking tokens up in a set is linear in the bytes scanned, however many needles there are. A needle that
# is not one token (an institution's name has spaces) can never be a token: it is searched as a substring.
_TOKEN = re.compile(rb"[0-9A-Za-z^.\-]+")


def _find(data: bytes, needles: set[bytes]) -> bytes | None:
    for needle in needles:
        if _TOKEN.fullmatch(needle) is None and needle in data:
            return needle
    for token in set(_TOKEN.findall(data)):
        token = token.strip(b".-")
        if token in needles:
            return token
        if b"^" in token:
            for part in token.split(b"^"):
                if part in needles:
                    return part
    return None


def test_the_scanner_finds_a_planted_name_date_and_uid():
    needles = {b"Kirchleitner^Algernon", b"Percival", b"19490321", b"1.2.826.0.1.3680043.8.498.1234"}
    assert _find(b'{"name": "Kirchleitner^Algernon"}', needles)
    assert _find(b"referring: Smith^Percival", needles) == b"Percival"
    assert _find(b"born 19490321.", needles)
    assert _find(b"uid=1.2.826.0.1.3680043.8.498.1234 ", needles)
    assert not _find(b"x=1194903215", needles)  # part of a longer number is not a birth date


def test_the_scanner_finds_a_planted_institution_name_of_several_words():
    from prrt_utils.synthetic.export import _INSTITUTIONS

    for name, _, _ in _INSTITUTIONS.values():
        needles = {name.encode(), b"Percival"}
        assert _find(f"<td>Scanned at {name}, dept. of nuclear medicine</td>".encode(), needles) == name.encode()
        assert _find(f'{{"institution": "{name}"}}'.encode(), needles) == name.encode()
        assert not _find(name.split()[-1].encode() + b" alone", {name.encode()})  # one word of it is not the name


@pytest.mark.slow
def test_no_identifying_string_reaches_any_output_of_the_book(built_book: Path):
    # both synthetic centres: the development cohort and the second centre the validation chapter reads
    needles = _needles(built_book / "data" / "synthetic") | _needles(built_book / "data" / "synthetic-b")
    scanned, hits = 0, []
    for folder in (built_book / "_build", built_book / "book" / "executed", built_book / "work"):
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            scanned += 1
            hit = _find(path.read_bytes(), needles)
            if hit:
                hits.append(f"{path.relative_to(built_book)}: {hit.decode(errors='replace')}")
    assert scanned > 100
    assert hits == [], "identifying data leaked:\n" + "\n".join(hits[:20])
