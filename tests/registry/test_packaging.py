"""The built wheel ships the YAML files, data files, typing markers and entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(build)},
    )
    return next(out.glob("detox_plugins-*.whl"))


def test_wheel_contains_yaml_data_and_entry_points(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "detox_plugins/hparams/DINM/smollm2-135m.yaml" in names
    assert "detox_plugins/hparams/DINM/llama-7b.yaml" in names
    assert "registry/py.typed" in names and "detox_plugins/py.typed" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[model_editors]" in entry_points and "dinm = detox_plugins.dinm" in entry_points
    assert "detox = detox_plugins.cli:main" in entry_points
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_shipped_names_resolve_from_a_plain_install_in_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import registry, detox_plugins;"
        "p = registry.resolve_hparams_path('DINM/smollm2-135m');"
        "print(p); print(detox_plugins.__file__);"
        "print(type(registry.from_hparams('DINM/llama-7b')).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved, package, hp_class = result.stdout.split()
    assert resolved.startswith(str(site)) and package.startswith(str(site))
    assert hp_class == "DINMHyperParams"
