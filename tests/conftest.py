import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ENCBENCH = Path(sys.executable).parent / "encbench"


TEST_BACKENDS = "faulty,widgets"  # tests/faulty.py (fault injection), tests/widgets.py (a counter of its own)


@pytest.fixture(autouse=True, scope="session")
def plugin_backends():
    """Make the test-only backends available, here and in worker processes, before any fixture runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENCBENCH_BACKENDS", TEST_BACKENDS)
        patch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        yield


def encbench(*args: str, results: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `encbench` command line, writing under `results`."""
    return subprocess.run(
        [str(ENCBENCH), f"results_dir={results}", "progress=false", "report=false", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def quick_sweep(tmp_path_factory) -> subprocess.CompletedProcess:
    """`encbench` with no arguments (as `make bench` runs it), once per session, with its report."""
    out = tmp_path_factory.mktemp("quick")
    env = {k: v for k, v in os.environ.items() if k != "ENCBENCH_BACKENDS"}  # only the real backends
    done = subprocess.run(
        [str(ENCBENCH), f"results_dir={out / 'results'}", f"reports_dir={out / 'reports'}", "progress=false"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    done.results, done.reports = out / "results", out / "reports"
    return done


EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Concrete's runtime, once it ran in this process, ends the interpreter with status 0, which hid
    failing tests from `make test` and CI: leave with pytest's own status before exit handlers run."""
    status = config.stash.get(EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
