"""The fault-and-load run (tests/load/fault_load.py) in its short form: 64 clients for 20 s,
a fifth of them hanging up, preemption and 503s forced; every check must pass."""
import os
import subprocess
import sys

from conftest import ROOT


def test_fault_and_load_short_form():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/load/fault_load.py"), "--duration", "20", "--clients", "64"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
