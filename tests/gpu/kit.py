"""Builds the device kit: the wheels rmlab needs on the lent GPU machine that its image lacks.

That machine (one H200; Python 3.12, torch 2.11+cu130, Lightning 2.6.6, transformers 5.17, peft, accelerate,
pytest) has no network and no hydra-core, omegaconf, antlr4, deepspeed, nor DeepSpeed's pydantic and hjson. Run
this here, where the package index is reachable; the kit goes to ``.devkit/`` (git-ignored), and the device call
carries it (``carry=[".devkit"]``; kit and tracked files must stay under 64 MiB)::

    python tests/gpu/kit.py            # then: run(command="bash tests/gpu/device_run.sh", carry=[".devkit"], ...)

``.devkit/wheels/``: CPython 3.12 manylinux or pure wheels, at the versions installed where this runs (CI's
environment: what the test suite ran with), no dependency resolution (the image has torch, numpy, psutil, tqdm,
...). deepspeed and antlr4 publish only sdists: they are built here into pure wheels (deepspeed with
``DS_BUILD_OPS=0``: no compiled op; the runs rmlab's GPU checks make need none). ``.devkit/build/``: setuptools and
wheel, for installing rmlab itself offline (pip's isolated build). ``.devkit/trl/``: TRL and the small packages it
adds (datasets, dill, multiprocess, xxhash); its big ones (pyarrow, pandas: about 55 MB) do not fit, so the
throughput check runs TRL only where the image has them. ``.devkit/MANIFEST.txt`` lists every file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 64 * 2**20  # what a device call carries: tracked files + the kit
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
            *[arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
              for arg in ("--platform", tag)]]
RUNTIME = [  # imported by python -m rmlab, deepspeed and rmlab.report beyond what the image has
    "hydra-core", "omegaconf", "PyYAML", "packaging", "hjson", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection", "typing-extensions", "msgpack", "einops", "py-cpuinfo", "rich", "markdown-it-py", "mdurl",
    "pygments"]
FROM_SDIST = ["deepspeed", "antlr4-python3-runtime"]
TRL = ["trl", "datasets", "dill", "multiprocess", "xxhash"]
BUILD = ["setuptools>=68", "wheel"]  # pyproject.toml's build-system requirements


def pinned(names: list[str]) -> list[str]:
    """``name==version`` as installed here."""
    try:
        return [f"{name}=={importlib.metadata.version(name)}" for name in names]
    except importlib.metadata.PackageNotFoundError as missing:
        raise SystemExit(f"kit: {missing.name} is not installed here; install rmlab's extras first (.ci/run)")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return sum((REPO_ROOT / name).stat().st_size for name in files.decode().split("\0") if name
               and (REPO_ROOT / name).is_file())


def build(kit: Path) -> int:
    """Builds the kit into ``kit`` (emptied first); returns its size in bytes."""
    shutil.rmtree(kit, ignore_errors=True)
    wheels, build_dir, trl = kit / "wheels", kit / "build", kit / "trl"
    pip("download", "--no-deps", *PLATFORM, "-d", str(wheels), *pinned(RUNTIME))
    pip("download", "--no-deps", *PLATFORM, "-d", str(trl), *pinned(TRL))
    pip("download", "--no-deps", *PLATFORM, "-d", str(build_dir), *BUILD)
    with tempfile.TemporaryDirectory() as sdists:
        pip("download", "--no-deps", "--no-binary=:all:", "-d", sdists, *pinned(FROM_SDIST))
        for sdist in sorted(Path(sdists).iterdir()):
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(sdist)],
                           check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
    files = sorted(p for p in kit.rglob("*") if p.is_file())
    for path in files:
        if not (path.name.endswith("-none-any.whl") or
                ("-cp312-cp312-manylinux" in path.name and path.name.endswith("x86_64.whl"))):
            raise SystemExit(f"kit: {path.name} is neither pure nor a CPython 3.12 manylinux wheel")
    size = sum(p.stat().st_size for p in files)
    (kit / "MANIFEST.txt").write_text("".join(f"{p.stat().st_size:>10}  {p.relative_to(kit)}\n" for p in files))
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".devkit", help="the kit's folder (emptied first)")
    kit = parser.parse_args().out
    size = build(kit)
    tracked = tracked_bytes()
    print(f"kit: {kit} holds {size / 2**20:.2f} MiB; with the tracked files {(size + tracked) / 2**20:.2f} MiB "
          f"(limit {LIMIT_BYTES / 2**20:.0f} MiB)")
    if size + tracked > LIMIT_BYTES:
        print("kit: too big to travel with the working tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
