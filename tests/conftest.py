"""Fixtures shared by every test tier."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    """Tests press Ctrl-C (SIGINT) on agents they start. A suite started in the background of
    a script (`cmd &`) inherits SIGINT ignored, and so would every agent it starts, which
    then cannot be interrupted: give this process, and so its children, the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(step: list[str], env: dict | None = None) -> None:
    done = subprocess.run(step, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(step)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Debian's dataset-fashion-mnist (the IDX files), installed here when missing."""
    from elasticml.data.fashion_mnist import FOLDER, FashionMNIST

    if FashionMNIST.preflight(split="train") or FashionMNIST.preflight(split="test"):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("dataset-fashion-mnist is not installed and cannot be installed here")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        _run(["apt-get", "update", "-q"], env)
        _run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], env)
    return Path(FOLDER)


@pytest.fixture(scope="session")
def movielens() -> Path:
    """MovieLens-100k inside the recbole wheel, installed without its dependencies if missing."""
    from elasticml.data.movielens import bundled_file
    from elasticml.errors import UserError

    try:
        return bundled_file()
    except UserError:
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "recbole"])
        importlib.invalidate_caches()
        return bundled_file()
