"""A corpus of broken layout files, each naming exactly where and why it is wrong.

Each file in ``broken/`` starts with a comment header the test parses::

    # for_rank: tp=4                       (optional: the error shows at for_rank, not load)
    # xfail: <known layout-model bug>       (optional: expectation is right, code is not yet)
    # expect: line=12 path=specs.x.dtype message=unknown dtype 'bf16'

``line=-`` / ``path=-`` mean "none". Every ``expect`` must match a distinct reported
problem (line and path exactly, message by substring), and every reported problem must be
expected — except the known cascade where a legend names a spec that is defined but
invalid (see ``test_dsl_edge_cases.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout import load_layout

BROKEN_DIR = Path(__file__).resolve().parent / "broken"
_EXPECT = re.compile(r"# expect: line=(?P<line>\d+|-) path=(?P<path>\S+) message=(?P<message>.+)$")


@attrs.frozen
class Expected:
    line: int | None
    path: str | None
    message: str

    def matches(self, p: LayoutProblem) -> bool:
        return p.line == self.line and p.path == self.path and self.message in p.message


@attrs.frozen
class Case:
    path: Path
    expected: tuple[Expected, ...]
    tp: int | None
    xfail: str | None


def _parse(path: Path) -> Case:
    expected: list[Expected] = []
    tp: int | None = None
    xfail: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if m := _EXPECT.match(line):
            expected.append(Expected(
                None if m["line"] == "-" else int(m["line"]),
                None if m["path"] == "-" else m["path"],
                m["message"],
            ))
        elif line.startswith("# for_rank: tp="):
            tp = int(line.removeprefix("# for_rank: tp="))
        elif line.startswith("# regression: "):
            pass
        elif line.startswith("# xfail: "):
            xfail = line.removeprefix("# xfail: ")
        else:
            raise AssertionError(f"{path.name}: unparsable header line {line!r}")
    assert expected, f"{path.name}: no '# expect:' header"
    return Case(path, tuple(expected), tp, xfail)


CASES = [_parse(p) for p in sorted(BROKEN_DIR.glob("*.toml"))]


def _params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        out.append(pytest.param(case, id=case.path.stem, marks=marks))
    return out


def _problems(case: Case) -> tuple[LayoutProblem, ...]:
    if case.tp is None:
        with pytest.raises(LayoutError) as info:
            load_layout(case.path)
    else:
        layout = load_layout(case.path)  # loads fine: the problem needs a TP size
        with pytest.raises(LayoutError) as info:
            layout.for_rank(case.tp, 0)
    return info.value.problems


def _is_cascade(p: LayoutProblem, text: str) -> bool:
    m = re.match(r"unknown spec '([^']+)'", p.message)
    return m is not None and f"[specs.{m.group(1)}]" in text


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 15
    assert sum(len(c.expected) > 1 for c in CASES) >= 1


@pytest.mark.parametrize("case", _params())
def test_broken_file_reports_exact_problems(case: Case) -> None:
    problems = list(_problems(case))
    text = case.path.read_text(encoding="utf-8")
    unmatched = list(problems)
    for exp in case.expected:
        hit = next((p for p in unmatched if exp.matches(p)), None)
        assert hit is not None, f"{exp} not among {problems}"
        unmatched.remove(hit)
    assert [p for p in unmatched if not _is_cascade(p, text)] == []
    if case.tp is None:
        assert all(p.file == str(case.path) for p in problems)


def test_several_problems_reported_at_once() -> None:
    case = next(c for c in CASES if c.path.stem == "several_problems")
    with pytest.raises(LayoutError) as info:
        load_layout(case.path)
    message = str(info.value)
    assert message.startswith(f"{len(info.value.problems)} layout problems:\n")
    for exp in case.expected:
        assert f"{case.path}:{exp.line}: {exp.path}: " in message
    assert len(case.expected) == 5
