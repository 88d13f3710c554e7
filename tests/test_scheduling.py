"""How tests are handed to pytest-xdist's workers (tests/conftest.py): `long` tests first, and
the tests of the pinned files all on one worker, so their costly session fixtures are built once.

The last test runs pytest with two workers on a small project that uses the same hooks: the
scheduler is xdist's extension point, and a rule that xdist silently ignores (as it ignores
`--dist loadgroup` marks under pytest 9.2) must fail here, not cost minutes unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import PINNED_FILES, _LongestFirst, pytest_collection_modifyitems
from tests.helpers import REPO


def test_every_pinned_file_exists():
    missing = [path for path in PINNED_FILES if not (REPO / path).is_file()]
    assert not missing, f"PINNED_FILES in tests/conftest.py names files that do not exist: {missing}"


def test_the_pinned_files_are_one_unit_and_any_other_test_its_own():
    scheduler = object.__new__(_LongestFirst)  # _split_scope reads nothing of the instance
    units = {scheduler._split_scope(f"{path}::test_{i}[x]") for i, path in enumerate(PINNED_FILES * 2)}
    assert len(units) == 1
    assert scheduler._split_scope("tests/test_other.py::test_a[x]") == "tests/test_other.py::test_a[x]"


def _item(name: str, long: bool) -> SimpleNamespace:
    marker = pytest.mark.long.mark if long else None
    return SimpleNamespace(name=name, get_closest_marker=lambda wanted: marker if wanted == "long" else None)


def test_long_tests_go_first_and_the_rest_keep_their_order():
    items = [_item("a", False), _item("b", True), _item("c", False), _item("d", True), _item("e", False)]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["b", "d", "a", "c", "e"]


PROJECT_CONFTEST = """\
import pytest
from tests.conftest import pytest_collection_modifyitems, pytest_xdist_make_scheduler

def pytest_configure(config):
    config.addinivalue_line("markers", "long: runs for seconds")
"""

# Each test records which worker ran it and when it started.
PROJECT_TEST = """\
import json, os, time, pytest

def record(name):
    with open(os.environ["SCHEDULE_LOG"], "a") as log:
        log.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"], time.monotonic()]) + "\\n")
    time.sleep(0.05)
"""


def test_xdist_runs_the_pinned_files_on_one_worker_and_long_tests_first(tmp_path):
    (tmp_path / "conftest.py").write_text(PROJECT_CONFTEST)
    for n, path in enumerate(PINNED_FILES):
        pinned = tmp_path / path
        pinned.parent.mkdir(parents=True, exist_ok=True)
        pinned.write_text(
            PROJECT_TEST + "".join(f"\ndef test_p{i}():\n    record('p{i}')\n" for i in range(n * 3, n * 3 + 3))
        )
    other = pinned.with_name("test_other.py")
    tests = "".join(f"\ndef test_o{i}():\n    record('o{i}')\n" for i in range(12))
    other.write_text(PROJECT_TEST + tests + "\n@pytest.mark.long\ndef test_last_but_long():\n    record('long')\n")
    log = tmp_path / "schedule.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SCHEDULE_LOG": str(log), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) == 19
    workers = {name: worker for name, worker, _ in runs}
    assert len({workers[f"p{i}"] for i in range(6)}) == 1, workers  # the pinned files: one worker
    assert len({workers[f"o{i}"] for i in range(12)}) == 2, workers  # the rest: both
    order = [name for name, _, _ in sorted(runs, key=lambda run: run[2])]
    assert order.index("long") < 2, order  # started with the first unit on its worker
