#!/usr/bin/env bash
# The lab demo: set-up, then `remediator lab demo` -- a lab of three hosts with VMs, one host losing
# power, and its VMs back on the others after the host was proven off. The lab keeps running
# afterwards (stop it with `make down`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/remediator lab demo "$@"
