#!/usr/bin/env bash
# Debian packages the adapter's local runtime and tests use: Orthanc with its DICOMweb plugin
# (the store), DCMTK (the PACS and modalities). Needs root (or sudo).
set -euo pipefail
packages=(orthanc orthanc-dicomweb dcmtk)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi
