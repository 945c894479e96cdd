"""The benchmarks still run and still check what they measure: a quick run of each C-FIND
query of bench/query_bench.py must give Orthanc's own answer through the adapter. No figure
is asserted here (timed tests on a shared machine prove nothing; docs/benchmarks.md has the
figures); a bench that no longer runs, or whose adapter answers differently, fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.orthanc import orthanc_available

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_query_bench_runs_every_c_find_query_and_the_adapter_answers_as_orthanc(tmp_path: Path):
    if not orthanc_available() or not Path("/usr/bin/findscu").exists():
        pytest.skip("needs Orthanc with DICOMweb and DCMTK (scripts/test.sh installs them)")
    result = subprocess.run(
        [sys.executable, str(BENCH / "query_bench.py"), "--quick", "--only", "find", "--repeat", "1",
         "--workdir", str(tmp_path), "--json", str(tmp_path / "out.json")],
        cwd=BENCH, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for query in ("all", "name*", "name^", "dates", "pid", "modality"):
        assert f"== C-FIND {query}:" in result.stdout
    assert result.stdout.count("the adapter's answers equal Orthanc's") == 6, result.stdout[-4000:]
    assert "Targets" in result.stdout and (tmp_path / "out.json").stat().st_size > 0
