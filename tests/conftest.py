import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ENCBENCH = Path(sys.executable).parent / "encbench"


@pytest.fixture(autouse=True)
def faulty_backend(monkeypatch):
    """Make the test-only fault injector available, here and in worker processes."""
    monkeypatch.setenv("ENCBENCH_BACKENDS", "faulty")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def encbench(*args: str, results: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `encbench` command line, writing under `results`."""
    return subprocess.run(
        [str(ENCBENCH), f"results_dir={results}", "progress=false", "report=false", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
