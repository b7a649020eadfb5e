#!/bin/bash
# Crash soak (issue 12): every SIGKILL phase of tests/test_crash.py, 20 runs each (ZAP_CRASH_RUNS),
# on the real parts. Prints pytest's summary; a failure names the phase and the invariant broken.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
ZAP_CRASH_RUNS="$runs" exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_crash.py -k killed
