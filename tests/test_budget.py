"""The default suite's false-fail budget (tests/stats.py) is complete, used and documented.

Every statistical family reads its rate by name from ``FALSE_FAIL_RATES``; this file checks
that the rates sum to at most ``SUITE_BUDGET``, that every name a test asks for is in the
table and every entry is asked for, and that docs/testing.md shows the same table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.stats import FALSE_FAIL_RATES, SUITE_BUDGET, rate

TESTS = Path(__file__).parent
DOC = TESTS.parent / "docs" / "testing.md"


def requested_families(folder: Path) -> dict[str, list[str]]:
    """Family name -> files whose code calls ``rate("<name>")`` with a literal name."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name == Path(__file__).name:  # this file's own examples
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "rate"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.setdefault(node.args[0].value, []).append(path.name)
    return found


def documented_rates(text: str) -> dict[str, float]:
    """Rows ``| family | rate |`` of the budget table in docs/testing.md."""
    rows = re.findall(r"^\| (?!family)([^|]+?) \| ([0-9.e-]+) \|", text, flags=re.M)
    return {family: float(value) for family, value in rows}


def test_the_rates_sum_to_at_most_the_budget():
    total = sum(FALSE_FAIL_RATES.values())
    assert 0 < total <= SUITE_BUDGET, total
    assert all(0 < r < SUITE_BUDGET for r in FALSE_FAIL_RATES.values())


def test_every_family_is_used_and_every_used_family_is_listed():
    requested = requested_families(TESTS)
    assert set(requested) == set(FALSE_FAIL_RATES), (
        f"unlisted: {sorted(set(requested) - set(FALSE_FAIL_RATES))}; "
        f"unused: {sorted(set(FALSE_FAIL_RATES) - set(requested))}"
    )


def test_an_unknown_family_is_refused():
    with pytest.raises(KeyError):
        rate("no such family")


def test_the_finder_sees_a_rate_call(tmp_path):
    # Negative control for the check above: a file that asks for a family is found.
    (tmp_path / "test_x.py").write_text('T = z_threshold(rate("made up"), 2)\n')
    assert requested_families(tmp_path) == {"made up": ["test_x.py"]}


def test_the_readme_states_the_sum():
    text = (TESTS.parent / "README.md").read_text()
    stated = re.search(r"rates\s+sum to ([0-9.e-]+) per run", text)
    assert stated and float(stated.group(1)) == pytest.approx(sum(FALSE_FAIL_RATES.values()))


def test_docs_show_the_same_table():
    documented = documented_rates(DOC.read_text())
    assert documented == FALSE_FAIL_RATES
    total = re.search(r"sum over the default suite: ([0-9.e-]+)", DOC.read_text())
    assert total and float(total.group(1)) == pytest.approx(sum(FALSE_FAIL_RATES.values()))


def literal_rate_calls(folder: Path) -> list[str]:
    """``z_threshold``/``power_margin`` calls whose rate is a bare number, not the budget's."""
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("z_threshold", "power_margin")
                and node.args
                and not any(isinstance(n, (ast.Name, ast.Call)) for n in ast.walk(node.args[0]))
            ):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_statistical_test_bypasses_the_budget(tmp_path):
    assert literal_rate_calls(TESTS) == []
    # Negative control: a literal rate is seen.
    (tmp_path / "test_y.py").write_text("T = z_threshold(1e-3 / 2, 4)\n")
    assert literal_rate_calls(tmp_path) == ["test_y.py:1"]
