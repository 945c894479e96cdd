#!/usr/bin/env bash
# Offline checkers of the deployment files (terraform/, Dockerfile, cloudbuild.yaml), installed once
# into .tools/ (git-ignored) from the package registries:
#   .tools/provider-schemas/<provider>.jsii  the hashicorp/<provider> Terraform provider schemas, as
#                                            shipped in the npm packages @cdktf/provider-<provider>
#   .tools/checkov/                          checkov in a virtualenv of its own (it pins versions of
#                                            packaging, boto3, networkx, ... that the project's
#                                            environment must not be forced to)
# Re-running it is cheap: whatever is present is kept. Needs npm (Debian package `npm`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Provider schema versions: the provider versions versions.tf pins, and the @cdktf packages built
# from exactly those versions (each package's README names its provider version; checked below).
declare -A schemas=(
  [google]="@cdktf/provider-google@16.12.1 6.50.0"
  [kubernetes]="@cdktf/provider-kubernetes@12.1.1 2.38.0"
  [archive]="@cdktf/provider-archive@11.0.1 2.7.1"
)
checkov_version="3.3.30"

tools=".tools"
mkdir -p "$tools/provider-schemas"

need_npm=0
for provider in "${!schemas[@]}"; do
  [ -s "$tools/provider-schemas/$provider.jsii" ] || need_npm=1
done
if [ "$need_npm" -eq 1 ] && ! command -v npm >/dev/null 2>&1; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends npm
fi

for provider in "${!schemas[@]}"; do
  target="$tools/provider-schemas/$provider.jsii"
  [ -s "$target" ] && continue
  read -r package provider_version <<<"${schemas[$provider]}"
  scratch="$(mktemp -d)"
  (cd "$scratch" && npm pack --silent "$package" >/dev/null)
  tarball="$(ls "$scratch"/*.tgz)"
  # Read the README whole first: `tar | grep -q` under pipefail fails at random when grep
  # stops at its first match and tar dies of SIGPIPE.
  readme="$(tar xzf "$tarball" -O package/README.md)"
  if ! grep -q "provider version $provider_version" <<<"$readme"; then
    echo "$package is not built from hashicorp/$provider $provider_version" >&2
    exit 1
  fi
  tar xzf "$tarball" -O package/.jsii > "$target.partial"
  mv "$target.partial" "$target"
  echo "$provider_version" > "$tools/provider-schemas/$provider.version"
  rm -rf "$scratch"
done

if [ ! -x "$tools/checkov/bin/checkov" ] || [ "$("$tools/checkov/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]; then
  rm -rf "$tools/checkov"
  python3 -m venv "$tools/checkov"
  "$tools/checkov/bin/pip" install --quiet --disable-pip-version-check "checkov==$checkov_version"
fi
