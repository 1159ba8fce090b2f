"""prunellm installs as a package: a wheel built from the repository (its native CPU library
compiled by setup.py) installs into a fresh virtual environment, and `prunellm --version` runs
from there, reading the version from the installed metadata."""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prunellm.io.versions import package_version

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from (pyproject.toml names README.md as the long description).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "src")


def _run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=None if env is None else {**os.environ, **env})
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_inputs(tmp_path: Path) -> Path:
    """A copy of what a build reads, so that the build's egg-info, build/ and compiled library
    stay out of the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    return source


@pytest.mark.parametrize("native", [
    pytest.param(False, id="without the native library"),  # seconds: in the default test run
    pytest.param(True, id="with the native library", marks=pytest.mark.slow),  # compiles it: about a minute
])
def test_a_wheel_built_from_the_repository_installs_and_runs(tmp_path, native):
    source = _build_inputs(tmp_path)
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
         str(source), cwd=tmp_path, env=None if native else {"PRUNELLM_NATIVE": "off"})
    (wheel,) = wheels.glob("prunellm-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    # setup.py compiled the library, or skipped it when asked
    assert any(name.startswith("prunellm/runtime/native/_prunellm_cpu") for name in files) == native
    assert "prunellm/eval/tasks/prunellm_basics/prunellm_basics.yaml" in files  # package data

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel), cwd=tmp_path)
    # The dependencies (torch, transformers, ...) from this test environment, behind the venv's
    # own site-packages: only the packages of this interpreter, not its prunellm (an editable
    # install's hook is a .pth file, which a path added this way does not run).
    purelib = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    (Path(purelib.strip()) / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    version = _run(str(venv / "bin" / "prunellm"), "--version", cwd=tmp_path)
    assert version.strip() == f"prunellm {package_version()}"
    where = _run(str(python), "-c", "import prunellm, prunellm.runtime.cpu_kernels as k; "
                                    "print(prunellm.__file__); print(k.available())", cwd=tmp_path).split()
    assert where[0].startswith(str(venv)) and where[1] == str(native)  # the wheel's package (and library), loaded


@pytest.mark.slow  # compiles the library: about a minute
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the AMX kernels are built on x86-64 Linux only")
def test_a_compiler_without_amx_still_builds_every_other_level(tmp_path):
    """setup.py with a compiler that fails on amx.cpp (an unknown flag added to its flags, as
    GCC 10 fails on -mamx-tile): one warning, and the library builds without the amx level."""
    source = _build_inputs(tmp_path)
    setup = source / "setup.py"
    text = setup.read_text()
    assert '"-mamx-tile", "-mamx-bf16"]' in text
    setup.write_text(text.replace('"-mamx-tile", "-mamx-bf16"]', '"-mamx-tile", "-mamx-bf16", "-mno-such-flag"]'))
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=source, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the AMX kernels not built" in done.stderr
    levels = _run(sys.executable, "-c", "from prunellm.runtime import cpu_kernels as k; "
                  "print(k.available(), ' '.join(k.supported_levels()))", cwd=source,
                  env={"PYTHONPATH": str(source / "src")}).split()
    assert levels[0] == "True" and "amx" not in levels and "portable" in levels
