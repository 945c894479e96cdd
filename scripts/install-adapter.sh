#!/usr/bin/env bash
# Install the adapter into its own virtualenv, ${DICOM_ADAPTER_VENV:-.venv} in this checkout
# (created if missing), never into the system Python: Debian's python3 refuses that (PEP 668),
# and pynetdicom's own storescu/findscu/storescp console scripts would shadow DCMTK's on PATH.
# The venv's bin/ is not put on PATH; run the adapter as .venv/bin/dicom-adapter.
# Arguments go to pip install (default: a regular install of this checkout, `.`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DICOM_ADAPTER_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${@:-.}"
