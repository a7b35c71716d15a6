"""The GPU machine's kit and script (tests/gpu), verified without a GPU: the kit builds from the package index and
installs with no index into a clean Python 3.12 environment (the device's Python), where rmlab composes every GPU
config without torch; the device script runs end to end in its dry mode (CUDA steps skipped) in this environment;
and on the device (``RMLAB_REQUIRE_GPU=1``) a skipped GPU check fails instead of passing."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT

LIMIT_BYTES = 64 * 2**20  # what a device call carries: the working tree and the kit


def python_312() -> str | None:
    """A CPython 3.12 interpreter: ``RMLAB_PYTHON312``, ``python3.12`` on the PATH, or pyenv's."""
    candidates = [os.environ.get("RMLAB_PYTHON312"), shutil.which("python3.12"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def working_tree_copy(destination: Path) -> Path:
    """The files a device call carries: tracked ones and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        if (REPO_ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)
    return destination


def test_a_skipped_gpu_check_fails_on_the_device(tmp_path):
    """tests/gpu's conftest: without CUDA its checks skip (CI, exit 0); with ``RMLAB_REQUIRE_GPU=1``, as the device
    script runs them, a skip fails the run (a missing CUDA or DeepSpeed once exited 0 there). Checked on a copy of
    that conftest with a stand-in test module (importing the real ones takes half a minute)."""
    package = tmp_path / "gpu"
    package.mkdir()
    for name in ("__init__.py", "conftest.py"):
        shutil.copy(REPO_ROOT / "tests" / "gpu" / name, package / name)
    (package / "test_stand_in.py").write_text(
        "import pytest\n\n\n@pytest.mark.skipif(True, reason='needs a CUDA GPU')\ndef test_on_the_gpu():\n    pass\n\n\n"
        "def test_anywhere():\n    pass\n")
    command = [sys.executable, "-m", "pytest", str(package), "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "RMLAB_REQUIRE_GPU"}
    here = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    device = subprocess.run(command, cwd=tmp_path, env={**env, "RMLAB_REQUIRE_GPU": "1"}, capture_output=True,
                            text=True, timeout=120)
    assert here.returncode == 0 and "1 passed, 1 skipped" in here.stdout, here.stdout[-2000:]
    assert device.returncode == 1 and "1 passed" in device.stdout, device.stdout[-2000:]
    assert "counts as a failure: Skipped: needs a CUDA GPU" in device.stdout, device.stdout[-2000:]


@pytest.mark.slow
def test_the_kit_builds_and_installs_offline_into_python_312_where_every_gpu_config_composes(tmp_path):
    python = python_312()
    if python is None:
        pytest.skip("no CPython 3.12 here (set RMLAB_PYTHON312): the kit's wheels are for the device's 3.12")
    started = time.monotonic()
    kit = tmp_path / "kit"
    built = subprocess.run([sys.executable, "tests/gpu/kit.py", "--out", str(kit)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    built_s = time.monotonic() - started
    kit_bytes = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    tree = working_tree_copy(tmp_path / "tree")
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert kit_bytes + tree_bytes < LIMIT_BYTES, (kit_bytes, tree_bytes)
    subprocess.run([python, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)  # no site packages
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    offline = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # no pip configuration: only the kit
    installed = subprocess.run(["bash", "tests/gpu/install_kit.sh", venv_python, str(kit)], cwd=tree, env=offline,
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    composed = subprocess.run([venv_python, "tests/gpu/compose_configs.py"], cwd=tree, capture_output=True, text=True,
                              timeout=300)
    assert composed.returncode == 0, composed.stdout[-2000:] + composed.stderr[-3000:]
    assert "composed 9 configurations; the Table 3 sweep has 8 losses; torch imported: False" in composed.stdout
    versions = subprocess.run([venv_python, "-c", "import importlib.metadata as m, sys; print(sys.version.split()[0],"
                               " *(m.version(p) for p in ('deepspeed', 'hydra-core', 'pydantic', 'rmlab')))"],
                              cwd=tree, capture_output=True, text=True, check=True).stdout.split()
    assert versions[1:] == [__import__("importlib").metadata.version(p) for p in ("deepspeed", "hydra-core",
                                                                                  "pydantic", "rmlab")]
    print(f"kit: built in {built_s:.0f} s, {kit_bytes / 2**20:.2f} MiB (+ {tree_bytes / 2**20:.2f} MiB of working "
          f"tree); installed offline and composed under Python {versions[0]} ({python}) in "
          f"{time.monotonic() - started - built_s:.0f} s")


@pytest.mark.slow
def test_the_device_script_runs_dry_end_to_end(tmp_path):
    """``RMLAB_DEVICE_DRY=1``: this environment instead of the kit, tests/gpu skipping, a tiny throughput check on
    the CPU; every step runs, so a typo in the script or the throughput check shows here, not on the device."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", "tests/gpu/device_run.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "RMLAB_DEVICE_DRY": "1", "PYTHON": sys.executable,
                                              "OUT": str(out)})
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stderr[-3000:]
    for expected in ("composed 9 configurations", "tests/gpu (rc 0", "SKIPPED", "THROUGHPUT rmlab auto",
                     "THROUGHPUT rmlab off", "THROUGHPUT attention", "THROUGHPUT trl best", "done: exit 0"):
        assert expected in summary, (expected, summary)
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["rmlab_packed"]["real_tokens_per_s"] > 0 and throughput["rmlab_padded"]["real_tokens_per_s"] > 0
    assert throughput["attention"]["per-sequence sdpa loop"]["max_abs_diff_vs_loop"] == 0
    assert {"env.txt", "pytest.log", "junit.xml", "throughput.log", "runs.tgz"} <= {p.name for p in out.iterdir()}
