"""The conftest guard: a test that uses the session servers without the ``servers`` marker fails
(and starts no server), so `make test-fast` can never quietly start them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_an_unmarked_test_using_a_server_fixture_fails_before_any_server_starts(tmp_path):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture\n"
        "def indirect(make_cfg):\n"
        "    return make_cfg\n\n"
        "def test_unmarked(make_cfg):\n    pass\n\n"
        "def test_unmarked_through_another_fixture(indirect):\n    pass\n\n"
        "def test_no_server():\n    pass\n")
    tmp = tmp_path / "tmp"          # where the session fixture would make its state directory
    tmp.mkdir()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not servers",
                        str(tmp_path / "test_x.py")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "TMPDIR": str(tmp)})
    out = r.stdout
    assert r.returncode == 1, out
    assert "1 passed" in out and "2 error" in out, out
    assert "test_unmarked uses the session servers (local_stack, make_cfg, stack) but is not marked" in out
    assert "test_unmarked_through_another_fixture uses the session servers" in out
    assert list(tmp.iterdir()) == [], "a server fixture ran"
