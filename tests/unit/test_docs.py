"""docs/dtab.md against the repository and the code.

* Every `docs/dtab.md §N` / `§N.M` citation anywhere in the repository (ranges and
  lists such as `§2–§5`, `§13.1-3`, `§10, §13` included) names a section that exists,
  and no citation of the old, unopenable `spec §` form is left.
* Every README link into docs/dtab.md points at a heading that exists.
* Every table marked `<!-- check: KIND -->` is run through the code row by row.
* The delegator worked example of §12.5 is what `/delegator.json` sends, byte for
  byte once the document's line breaks and indentation are removed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

import pytest

import dtab
from dtab import (
    Bound,
    DelegationDepthExceeded,
    DtabError,
    Leaf,
    bind,
    delegate_json,
    read_dtab,
    read_path,
    read_prefix,
    read_tree,
    show_weight,
    simplify,
    system_lookup,
)
from dtab.tree import _FAILED, _eval

ROOT = FsPath(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "dtab.md"
TEXT = DOC.read_text(encoding="utf-8")

# -- sections and citations ---------------------------------------------------------------

_HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? (.*)$", re.MULTILINE)
_NUM = r"\d+(?:\.\d+)?"
_CITATION = re.compile(
    rf"docs/dtab\.md §({_NUM})((?:\s*(?:,|and)\s*§{_NUM}|\s*[-–]\s*§?{_NUM})*)"
)
_CONTINUATION = re.compile(rf"([-–,]|and)\s*(§?)({_NUM})")
_SUFFIXES = {".py", ".md", ".html", ".js", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"}
_SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules", "artifacts"}
# The old citation form, spelled so that this file does not match itself.
_OLD_FORM = re.compile("spec " + "\u00a7", re.IGNORECASE)


def sections() -> set[str]:
    return {m.group(2) for m in _HEADING.finditer(TEXT)}


def repository_files() -> Iterator[FsPath]:
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(files):
            path = FsPath(top) / name
            if path.suffix in _SUFFIXES:
                yield path


def citations() -> list[tuple[str, int, str]]:
    """(file, line, section) for every section a citation names."""
    found = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in _CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            rel = str(path.relative_to(ROOT))
            first = m.group(1)
            found.append((rel, line, first))
            for sep, mark, num in _CONTINUATION.findall(m.group(2)):
                if sep in "-–" and not mark and "." in first and "." not in num:
                    num = f"{first.split('.')[0]}.{num}"  # §13.1-3 is §13.1 to §13.3
                found.append((rel, line, num))
    return found


def test_document_has_every_numbered_section() -> None:
    found = sections()
    for major in range(1, 15):
        assert str(major) in found
    # the subsections the code cites most
    assert {"2.2", "2.4", "4.3", "4.4", "6.2", "8.1", "8.2", "9.3", "12.1", "12.5", "13.4", "13.5"} <= found


def test_every_citation_names_a_section_that_exists() -> None:
    found = citations()
    assert len(found) >= 76, "the repository's citations were not found"  # issue 11 counted 76
    known = sections()
    missing = [f"{f}:{line}: §{num}" for f, line, num in found if num not in known]
    assert not missing, "citations of sections docs/dtab.md does not have:\n" + "\n".join(missing)


def test_citation_ranges_and_lists_are_read() -> None:
    text = "see docs/dtab.md §2–§5 and docs/dtab.md §13.1-3, docs/dtab.md §10, §13; RFC 9110 §7.6.1"
    nums = []
    for m in _CITATION.finditer(text):
        nums.append(m.group(1))
        nums.extend(n for _, _, n in _CONTINUATION.findall(m.group(2)))
    assert nums == ["2", "5", "13.1", "3", "10", "13"]


def test_no_citation_of_the_external_spec_is_left() -> None:
    me = FsPath(__file__).resolve()
    left = []
    for path in repository_files():
        if path.resolve() == me:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in _OLD_FORM.finditer(text):
            left.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not left, "cite docs/dtab.md instead:\n" + "\n".join(left)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_readme_links_into_the_document_resolve() -> None:
    anchors = {_slug(f"{m.group(2)}. {m.group(3)}") for m in _HEADING.finditer(TEXT)}
    anchors |= {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", TEXT, re.MULTILINE)}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(docs/dtab\.md(?:#([^)]*))?\)", readme)
    assert links, "README.md should link docs/dtab.md"
    bad = [a for a in links if a and a not in anchors]
    assert not bad, f"README.md links to anchors docs/dtab.md does not have: {bad}"


# -- the checked tables --------------------------------------------------------------------

_MARKER = re.compile(r"^<!-- check: ([\w-]+) -->$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_ERROR = re.compile(r"^error `(.*)`$")
_CODE = re.compile(r"^`(.*)`$")


def _cell(raw: str) -> Any:
    raw = raw.strip().replace("\\|", "|")
    if raw == "(empty)":
        return ""
    m = _ERROR.match(raw)
    if m:
        return ("error", m.group(1))
    m = _CODE.match(raw)
    return m.group(1) if m else raw


def checked_tables() -> list[tuple[str, int, list[list[Any]]]]:
    """(kind, line of the marker, rows) for every table marked `<!-- check: kind -->`."""
    lines = TEXT.split("\n")
    tables = []
    for i, line in enumerate(lines):
        m = _MARKER.match(line)
        if not m or m.group(1) == "delegator-example":
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        header = [c.strip() for c in _CELL_SPLIT.split(lines[j].strip())[1:-1]]
        skip_first = header[0] == "#"
        rows = []
        j += 2  # the header and the |---| line
        while j < len(lines) and lines[j].startswith("|"):
            cells = [_cell(c) for c in _CELL_SPLIT.split(lines[j].strip())[1:-1]]
            rows.append(cells[1:] if skip_first else cells)
            j += 1
        tables.append((m.group(1), i + 1, rows))
    return tables


def _attempt(fn: Any) -> Any:
    try:
        return fn()
    except DtabError as exc:
        return ("error", str(exc))


def _shown(fn: Any) -> Any:
    return _attempt(lambda: fn().show())


def _system(path: str) -> tuple[Any, str]:
    try:
        tree = system_lookup(read_path(path))
    except DtabError as exc:
        return ("error", str(exc)), "—"
    if isinstance(tree, Leaf) and isinstance(tree.value, Bound):
        return tree.value.id.show(), tree.value.residual.show()
    return tree.show(), "—"


def _evaluated(text: str) -> Any:
    result = _eval(read_tree(text))
    if result is None:
        return "negative"
    if result is _FAILED:
        return "failed"
    assert isinstance(result, frozenset)
    return frozenset(v.show() for v in result)


def _expected_set(text: str) -> Any:
    if text in ("negative", "failed"):
        return text
    inner = text.strip("{}").strip()
    return frozenset(s.strip() for s in inner.split(",")) if inner else frozenset()


def compact(value: Any) -> str:
    from proxy.admin.app import _dumps  # what /delegator.json writes

    return _dumps(value)


def _delegated(dtab_text: str, path: str) -> Any:
    try:
        return compact(delegate_json(read_dtab(dtab_text), read_path(path)))
    except DelegationDepthExceeded as exc:
        return ("error", str(exc))


def check_row(kind: str, row: list[Any]) -> tuple[Any, Any]:
    """(what the code gives, what the document says) for one row."""
    if kind == "path":
        return _shown(lambda: read_path(row[0])), row[1]
    if kind == "prefix":
        return _shown(lambda: read_prefix(row[0])), row[1]
    if kind == "tree":
        return _shown(lambda: read_tree(row[0])), row[1]
    if kind == "dtab":
        return _shown(lambda: read_dtab(row[0])), row[1]
    if kind == "weight":
        return show_weight(float(row[0])), row[1]
    if kind == "lookup":
        table, path = read_dtab(row[0]), read_path(row[1])
        assert dtab.compile(table).lookup(path) == table.lookup(path)
        return table.lookup(path).show(), row[2]
    if kind == "bind":
        return _shown(lambda: bind(read_dtab(row[0]), read_path(row[1]))), row[2]
    if kind == "system":
        return _system(row[0]), (row[1], row[2])
    if kind == "simplify":
        return simplify(read_tree(row[0])).show(), row[1]
    if kind == "evaluate":
        return _evaluated(row[0]), _expected_set(row[1])
    if kind == "delegator":
        return _delegated(row[0], row[1]), row[2]
    raise AssertionError(f"unknown check kind {kind!r}")


TABLES = checked_tables()


def test_checked_tables_were_found() -> None:
    kinds = {kind for kind, _, _ in TABLES}
    assert kinds == {"path", "prefix", "tree", "dtab", "weight", "lookup", "bind", "system",
                     "simplify", "evaluate", "delegator"}  # fmt: skip
    assert all(rows for _, _, rows in TABLES)
    assert sum(len(rows) for _, _, rows in TABLES) >= 120


@pytest.mark.parametrize(
    ("kind", "row"),
    [pytest.param(kind, row, id=f"{kind}@{line}#{n}") for kind, line, rows in TABLES for n, row in enumerate(rows)],
)
def test_checked_table_row(kind: str, row: list[Any]) -> None:
    got, expected = check_row(kind, row)
    assert got == expected


# -- the worked delegator example (§12.5) ----------------------------------------------------------


def _fenced_blocks_after(marker: str, count: int) -> list[str]:
    start = TEXT.index(marker)
    blocks = re.findall(r"^```[\w-]*\n(.*?)^```$", TEXT[start:], re.MULTILINE | re.DOTALL)
    assert len(blocks) >= count
    return blocks[:count]


def _without_layout(json_text: str) -> str:
    """The JSON text with whitespace between tokens removed (whitespace inside strings
    is kept), so only the document's line breaks and indentation go."""
    out = []
    in_string = escaped = False
    for c in json_text:
        if in_string:
            out.append(c)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif not c.isspace():
            out.append(c)
    return "".join(out)


DTAB_TEXT, PATH_TEXT, JSON_TEXT = _fenced_blocks_after("<!-- check: delegator-example -->", 3)


def test_worked_example_is_what_the_code_explains() -> None:
    shown = json.loads(JSON_TEXT)  # the document's text is valid JSON
    body = compact(delegate_json(read_dtab(DTAB_TEXT), read_path(PATH_TEXT)))
    assert json.loads(body) == shown
    assert _without_layout(JSON_TEXT) == body


def test_worked_example_is_what_the_endpoint_sends(run: Any) -> None:
    from proxy.admin import delegator

    result = run(delegator.delegate(read_dtab(DTAB_TEXT), read_path(PATH_TEXT)))
    assert compact(result).encode() == _without_layout(JSON_TEXT).encode()


def test_worked_example_binding_is_as_described() -> None:
    bound = bind(read_dtab(DTAB_TEXT), read_path(PATH_TEXT)).show()
    assert bound == "3.00*/$/inet/127.0.0.1/8081 & /$/inet/127.0.0.1/8082"
    assert f"`{bound}`" in TEXT
