#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what it needs (Debian packages; the
# adapter with its test extras, editable, into .venv/; the deployment checkers in .tools/), then
# runs pytest from .venv. The end-to-end tests do not run this editable install: they build the
# wheel and the Cloud Functions source as shipped and run those (tests/support/shipped.py).
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
# debootstrap: the stock-Debian Quick start test (tests/test_quickstart_debian.py).
scripts/install-system-packages.sh debootstrap
scripts/install-adapter.sh -e '.[test]'
scripts/install-deploy-tools.sh
exec "${DICOM_ADAPTER_VENV:-.venv}/bin/python" -m pytest -p no:cacheprovider "$@"
