"""The suite's time budget, a pytest plugin (issue 22): a whole run of the suite
(`python -m pytest` with no arguments, what CI runs on its 2-core machine) that passes but
takes longer than the ini's `suite_budget_s` fails with one line naming its slowest tests, and
so does a test whose call takes longer than `slow_test_s` while its docstring gives no reason
(a line starting "Slow:"). A run of a subset (paths, -k, -m, --lf) is never judged.

tests/conftest.py loads it; tests/test_suite_budget.py runs it on small suites of its own
(`-p suite_budget` with this folder on the path). It imports nothing but pytest."""
import time

import pytest

SLOW_REASON = "Slow:"


def pytest_addoption(parser):
    parser.addini("suite_budget_s", "a whole run of the suite that takes longer fails, naming "
                  "its slowest tests (0: no budget)", default="0")
    parser.addini("slow_test_s", "a test that takes longer must say why in its docstring, on "
                  f"a line starting '{SLOW_REASON}'", default="20")


class _Budget:
    """Times the session and each test (setup + call + teardown; with pytest-xdist, from the
    workers' reports, in the controller)."""

    def __init__(self, config):
        self.config, self.start = config, time.monotonic()
        self.durations: dict[str, float] = {}   # setup + call + teardown: what the suite pays
        self.calls: dict[str, float] = {}       # the test itself (a shared fixture's cost
        # falls on whichever test comes first, and says why in its own docstring)
        self.reasons: dict[str, bool] = {}
        self.failure: str | None = None

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.when == "call":
            self.calls[report.nodeid] = report.duration
        for key, value in report.user_properties:
            if key == "slow_reason":
                self.reasons[report.nodeid] = value

    def _whole_suite(self) -> bool:
        option = self.config.option
        return (self.config.args_source == pytest.Config.ArgsSource.TESTPATHS
                and not option.keyword and not option.markexpr
                and not getattr(option, "deselect", None) and not getattr(option, "lf", False))

    def verdict(self) -> str | None:
        """One line if the budget is broken, else None."""
        budget = float(self.config.getini("suite_budget_s"))
        slow_s = float(self.config.getini("slow_test_s"))
        if not budget or not self._whole_suite():
            return None
        elapsed = time.monotonic() - self.start
        slowest = sorted(self.durations.items(), key=lambda kv: -kv[1])
        unexplained = [n for n, d in sorted(self.calls.items(), key=lambda kv: -kv[1])
                       if d > slow_s and not self.reasons.get(n, False)]
        if elapsed > budget:
            names = ", ".join(f"{n} ({d:.0f} s)" for n, d in slowest[:5])
            return (f"the suite took {elapsed:.0f} s, over its budget of {budget:.0f} s "
                    f"(setup.cfg suite_budget_s); slowest: {names}")
        if unexplained:
            return (f"{len(unexplained)} test(s) took over {slow_s:.0f} s (setup.cfg "
                    f"slow_test_s) without a '{SLOW_REASON}' line in the docstring saying why: "
                    + ", ".join(f"{n} ({self.calls[n]:.0f} s)" for n in unexplained))
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if exitstatus == pytest.ExitCode.OK:
            self.failure = self.verdict()
            if self.failure:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.failure:
            terminalreporter.write_line(f"suite budget: FAILED: {self.failure}", red=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Whether the test's docstring says why it is slow, carried by its report (to pytest-xdist's
    controller too)."""
    outcome = yield
    if call.when == "call":
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        has = any(line.strip().startswith(SLOW_REASON) for line in doc.splitlines())
        outcome.get_result().user_properties.append(("slow_reason", has))


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without pytest-xdist)
        config.pluginmanager.register(_Budget(config), "resnet_jax_suite_budget")
