#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what it needs (Debian and Python
# packages, the deployment checkers in .tools/), then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-packages.sh
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
scripts/install-deploy-tools.sh
exec python3 -m pytest -p no:cacheprovider "$@"
