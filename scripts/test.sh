#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what it needs (Debian packages; the
# adapter with its test extras, editable, into .venv/; the deployment checkers in .tools/), then
# runs pytest from .venv. The end-to-end tests do not run this editable install: they build the
# wheel and the Cloud Functions source as shipped and run those (tests/support/shipped.py).
# Extra arguments go to pytest, in both passes (e.g. scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
# debootstrap: the stock-Debian Quick start test (tests/test_quickstart_debian.py); dicom3tools:
# dciodvfy, the validator the de-identification tests compare instances with; libgdcm-tools:
# gdcmconv, the JPEG 2000 peer of bench/transcode_bench.py (DCMTK has no JPEG 2000 codec).
scripts/install-system-packages.sh debootstrap dicom3tools libgdcm-tools
scripts/install-adapter.sh -e '.[test]'
scripts/install-deploy-tools.sh
python="${DICOM_ADAPTER_VENV:-.venv}/bin/python"
"$python" -m pytest -p no:cacheprovider "$@"
# The DIMSE tests again on plain pynetdicom, the listener's fast path off (docs/architecture.md):
# what the edge does on a pynetdicom release its fast path was not written for.
dimse_tests=(
  tests/test_admission.py tests/test_commitment.py tests/test_dimse_tls.py tests/test_edge_acceptance.py
  tests/test_fuzz_listener.py tests/test_large_instance.py tests/test_local_import.py tests/test_malformed_input.py
  tests/test_no_phi_in_logs.py tests/test_query.py tests/test_retrieve.py tests/test_retrieve_pipeline.py
  tests/test_routing_acceptance.py tests/test_cloud_import.py
)
echo "--- the DIMSE tests with the fast path off (DICOM_ADAPTER_DIMSE_FAST_PATH=off) ---"
DICOM_ADAPTER_DIMSE_FAST_PATH=off exec "$python" -m pytest -p no:cacheprovider "$@" "${dimse_tests[@]}"
