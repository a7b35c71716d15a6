"""On the device (``RMLAB_REQUIRE_GPU=1``, which tests/gpu/device_run.sh sets) a skipped test is a failure: a
missing CUDA, DeepSpeed or kernel must not pass as a green run. Elsewhere (CI's CPU) these tests skip."""

from __future__ import annotations

import os

import pytest

REQUIRE_GPU = os.environ.get("RMLAB_REQUIRE_GPU") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped on the device (RMLAB_REQUIRE_GPU=1), which counts as a failure: {reason}"
