#!/usr/bin/env bash
# Install what the tests need, then run them. This is README.md's test command.
#   - the package with its test extras (pytest, ruff, Playwright, mpi4py with the mpich wheel)
#   - Debian's Chromium for the report's browser test (Playwright drives the system binary;
#     nothing is downloaded at run time)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "scripts/test.sh: the report's browser test needs Debian's chromium package" >&2
        echo "  (apt-get install chromium); install it and run again" >&2
        exit 1
    fi
fi
python -m pip install --quiet -e ".[dev]"
python -m pytest "$@"
