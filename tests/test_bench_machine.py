"""Every bench report names the machine it was measured on (bench/machine.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mailaudit.bench.machine import _cpuinfo, describe

TWO_CORES = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2449.998
cache size\t: 512 KB

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: something else
cpu MHz\t\t: 1000.000
"""


def test_cpuinfo_takes_the_first_processors_fields():
    info = _cpuinfo(TWO_CORES)
    assert info["model name"] == "AMD EPYC 7B13" and info["cpu MHz"] == "2449.998" and info["processor"] == "0"


def test_describe_reads_model_and_clock(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(TWO_CORES)
    d = describe(str(p))
    assert d["cpu_model"] == "AMD EPYC 7B13" and d["cpu_mhz"] == 2450
    assert d["cores"] == os.cpu_count() and d["python"] == ".".join(map(str, sys.version_info[:3]))


def test_describe_without_cpuinfo_still_answers(tmp_path):
    d = describe(str(tmp_path / "missing"))
    assert d["cpu_mhz"] is None and d["cores"] == os.cpu_count()
    p = tmp_path / "odd"
    p.write_text("model name\t: X\ncpu MHz\t: n/a\n")            # a clock the kernel does not give as a number
    assert describe(str(p)) == {**d, "cpu_model": "X"}


def test_bench_cli_report_names_the_machine():
    out = subprocess.run([sys.executable, "-m", "mailaudit", "bench", "parser", "--json", "--runs", "1", "--events", "300"],
                         capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    here = describe()
    # the clock is read when asked (it moves with frequency scaling): the rest must be the same
    assert {k: v for k, v in report["machine"].items() if k != "cpu_mhz"} == {k: v for k, v in here.items() if k != "cpu_mhz"}
    assert "cpu_mhz" in report["machine"] and report["repeats"] == 1
