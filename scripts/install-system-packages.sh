#!/usr/bin/env bash
# Debian packages the adapter's local runtime uses: Orthanc with its DICOMweb plugin (the store),
# DCMTK (the PACS and modalities), and Python with venv (the adapter lives in a virtualenv of its
# own, never in the system Python). Extra arguments are more packages (scripts/test.sh adds what
# the tests need). Needs root (or sudo).
set -euo pipefail
packages=(orthanc orthanc-dicomweb dcmtk python3 python3-venv "$@")
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update
  # Through env: sudo resets the environment, so a DEBIAN_FRONTEND set before it would not arrive.
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
