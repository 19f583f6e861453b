"""The suite's own rule: what CI provides may not skip there."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_a_missing_test_library_skips_here_and_fails_in_ci(tmp_path):
    test = tmp_path / "test_needs.py"
    test.write_text("from tests.helpers import need_module\n"
                    "mod = need_module('kadr_no_such_library')\n"
                    "def test_it():\n    pass\n")

    def run(ci: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-rs", str(test)], env=env, capture_output=True, text=True,
                              cwd=tmp_path)

    here = run("")
    assert here.returncode in (0, 5) and "1 skipped" in here.stdout, here.stdout
    assert "kadr_no_such_library" in here.stdout
    ci = run("true")
    assert ci.returncode != 0 and "make test installs kadr[test]" in ci.stdout, ci.stdout
