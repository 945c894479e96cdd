#!/usr/bin/env bash
# Set everything up on a fresh Debian machine and run the local pipeline:
#   Orthanc (DICOMweb store) on http://127.0.0.1:${ORTHANC_HTTP_PORT:-18042}/dicom-web
#   dicom-adapter (AE ${DIMSE_AET:-DICOMADAPTER}) on DIMSE port ${DIMSE_PORT:-2575}
# Send to it with e.g. `storescu -aec DICOMADAPTER 127.0.0.1 2575 image.dcm`. Ctrl-C stops both.
# The adapter is installed into .venv/ of this checkout (.venv/bin/dicom-adapter), not into the
# system Python and not on PATH, so `storescu` stays DCMTK's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-packages.sh
scripts/install-adapter.sh
venv="${DICOM_ADAPTER_VENV:-.venv}"

state=".quickstart"
http_port="${ORTHANC_HTTP_PORT:-18042}"
orthanc_dimse_port="${ORTHANC_DIMSE_PORT:-14242}"
mkdir -p "$state/orthanc-storage" "$state/spool"
cat > "$state/orthanc.json" <<JSON
{
  "Name": "dicom-adapter-quickstart",
  "StorageDirectory": "$PWD/$state/orthanc-storage",
  "IndexDirectory": "$PWD/$state/orthanc-storage",
  "HttpPort": $http_port,
  "DicomPort": $orthanc_dimse_port,
  "DicomAet": "ORTHANC",
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/" }
}
JSON
adapter_pid=""
# Ctrl-C, a SIGTERM or an error: stop the adapter (it drains what it has acknowledged), then
# Orthanc, and return only once both have exited. Further signals are ignored meanwhile, since
# one would cut bash's `wait` short and leave them running behind the prompt.
stop_all() {
  trap '' INT TERM
  if [ -n "$adapter_pid" ]; then
    kill -TERM "$adapter_pid" 2>/dev/null || true
    wait "$adapter_pid" 2>/dev/null || true
  fi
  kill -TERM "$orthanc_pid" 2>/dev/null || true
  wait "$orthanc_pid" 2>/dev/null || true
}
/usr/sbin/Orthanc "$state/orthanc.json" > "$state/orthanc.log" 2>&1 &
orthanc_pid=$!
trap 'stop_all' EXIT
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
orthanc_up=0
for _ in $(seq 1 150); do
  if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$http_port/system', timeout=1)" 2>/dev/null; then
    orthanc_up=1
    break
  fi
  sleep 0.2
done
if [ "$orthanc_up" -ne 1 ]; then
  echo "Orthanc did not answer on http://127.0.0.1:$http_port/ within 30 s; its log ($state/orthanc.log):" >&2
  tail -n 20 "$state/orthanc.log" >&2
  exit 1
fi
echo "Orthanc is up: http://127.0.0.1:$http_port/ (log: $state/orthanc.log)"

"$venv/bin/dicom-adapter" local \
  --dimse_aet "${DIMSE_AET:-DICOMADAPTER}" \
  --dimse_port "${DIMSE_PORT:-2575}" \
  --dicomweb_address "http://127.0.0.1:$http_port/dicom-web" \
  --spool_dir "$state/spool" &
adapter_pid=$!
wait "$adapter_pid"
