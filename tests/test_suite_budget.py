"""The suite's time budget (tests/suite_budget.py) on small suites of its own, each run as
CI runs the real one (`python -m pytest`, no arguments, its ini's testpaths): over the budget
it fails with one line naming the slowest tests first; a test over `slow_test_s` fails the
suite unless its docstring says why; a subset is never judged."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

TESTS = '''
import time


def test_fast():
    pass


def test_slow_with_a_reason():
    """Sleeps.

    Slow: it sleeps, on purpose."""
    time.sleep(1.2)


def test_slow_without_a_reason():
    time.sleep(0.5)
'''


def run_suite(tmp_path, *args, budget_s: float, slow_test_s: float):
    (tmp_path / "pytest.ini").write_text(textwrap.dedent(f"""\
        [pytest]
        testpaths = .
        suite_budget_s = {budget_s}
        slow_test_s = {slow_test_s}
        """))
    (tmp_path / "test_sleeps.py").write_text(TESTS)
    env = dict(os.environ, PYTHONPATH=HERE)
    env.pop("PYTEST_ADDOPTS", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "suite_budget", "-p",
                          "no:cacheprovider", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if "suite budget" in line]
    return out, lines


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["1-process", "xdist"])
def test_a_suite_over_its_budget_fails_with_one_line_naming_its_slowest_tests(tmp_path,
                                                                            workers):
    out, lines = run_suite(tmp_path, *workers, budget_s=0.3, slow_test_s=60)
    assert out.returncode == 1 and "3 passed" in out.stdout, out.stdout[-2000:]
    assert len(lines) == 1, out.stdout[-2000:]
    line = lines[0]
    assert "over its budget of 0 s (setup.cfg suite_budget_s)" in line
    named = re.findall(r"test_sleeps\.py::(\w+) \((\d+) s\)", line)
    assert [name for name, _ in named] == ["test_slow_with_a_reason",
                                           "test_slow_without_a_reason", "test_fast"], line
    assert int(named[0][1]) >= 1, line  # the slowest first, each with its time


def test_a_suite_within_its_budget_passes(tmp_path):
    out, lines = run_suite(tmp_path, budget_s=60, slow_test_s=60)
    assert out.returncode == 0 and "3 passed" in out.stdout and not lines, out.stdout[-2000:]


def test_a_slow_test_without_a_reason_fails_the_suite_and_is_named(tmp_path):
    out, lines = run_suite(tmp_path, budget_s=60, slow_test_s=0.3)
    assert out.returncode == 1 and "3 passed" in out.stdout, out.stdout[-2000:]
    assert len(lines) == 1 and "1 test(s) took over 0 s" in lines[0], lines
    assert "test_slow_without_a_reason" in lines[0], lines
    assert "test_slow_with_a_reason" not in lines[0], lines  # its docstring says why


@pytest.mark.parametrize("subset", [("test_sleeps.py",), ("-k", "slow")], ids=["path", "-k"])
def test_a_subset_is_never_judged(tmp_path, subset):
    out, lines = run_suite(tmp_path, *subset, budget_s=0.01, slow_test_s=0.01)
    assert out.returncode == 0 and not lines, out.stdout[-2000:]
