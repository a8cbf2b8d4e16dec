#!/usr/bin/env bash
# The lab demo: set-up, then a lab of three hosts, left running (stop it with `make down`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/remediator lab up --hosts 3
.venv/bin/remediator lab status
