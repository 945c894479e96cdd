"""The benchmarks still run and still check what they measure: a quick run of each C-FIND
query of bench/query_bench.py must give Orthanc's own answer through the adapter, and each
copy bench/transcode_bench.py makes must hold the source's pixels in its target syntax. No figure
is asserted here (timed tests on a shared machine prove nothing; docs/benchmarks.md has the
figures); a bench that no longer runs, or whose adapter answers differently, fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.orthanc import orthanc_available

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A quick run of bench/`script`, its work dir and JSON in `tmp_path`; it must exit 0."""
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--workdir", str(tmp_path), "--json", str(tmp_path / "out.json")],
        cwd=BENCH, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def test_the_query_bench_runs_every_c_find_query_and_the_adapter_answers_as_orthanc(tmp_path: Path):
    if not orthanc_available() or not Path("/usr/bin/findscu").exists():
        pytest.skip("needs Orthanc with DICOMweb and DCMTK (scripts/test.sh installs them)")
    result = run_bench("query_bench.py", tmp_path, "--quick", "--only", "find", "--repeat", "1")
    for query in ("all", "name*", "name^", "dates", "pid", "modality"):
        assert f"== C-FIND {query}:" in result.stdout
    for side in ("adapter", "instant"):  # instant: the adapter over the replaying store
        assert result.stdout.count(f"the {side} side's answers equal Orthanc's") == 6, result.stdout[-4000:]
    assert result.stdout.count("ceiling (qido-rs + instant) / qido-rs") == 6
    assert "Targets" in result.stdout and (tmp_path / "out.json").stat().st_size > 0


def test_the_transcode_bench_runs_every_target_and_checks_the_copies(tmp_path: Path):
    if not Path("/usr/bin/dcmcrle").exists():
        pytest.skip("needs DCMTK (scripts/test.sh installs it)")
    result = run_bench("transcode_bench.py", tmp_path, "--quick", "--count", "4", "--large-mib", "1")
    rows = json.loads((tmp_path / "out.json").read_text())
    adapter = {(r["case"], r["target"]) for r in rows if r["side"] == "adapter"}
    assert adapter == {(case, t) for case in ("corpus", "large") for t in ("j2k", "jls", "rle", "evrle", "deid")}
    assert all(r["check"] == "OK" for r in rows), result.stdout[-4000:]
    assert {"dcmcjpls", "dcmcrle", "dcmconv"} <= {r["side"] for r in rows}  # DCMTK: scripts/test.sh installs it
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # the work dir is removed


def test_the_import_bench_measures_acks_against_storescp_and_the_durable_commit_ceiling(tmp_path: Path):
    if not Path("/usr/bin/storescp").exists():
        pytest.skip("needs DCMTK (scripts/test.sh installs it)")
    result = run_bench("import_bench.py", tmp_path, "--quick", "--only", "small-1", "--receivers", "storescp +B,edge")
    out = json.loads((tmp_path / "out.json").read_text())
    rows = {r["receiver"]: r for r in out["rows"]}
    assert set(rows) == {"storescp +B", "edge"} and all(r["ok"] for r in rows.values()), result.stdout[-4000:]
    assert all(r["received"] == r["instances"] for r in rows.values())
    assert 0 < out["durable_commit_ms"] < 1000
    ceiling = next(c for c in out["checks"] if c["check"].startswith("(b) ceiling"))
    assert 0 < ceiling["ratio"] < 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # the work dir is removed
