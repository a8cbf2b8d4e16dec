#!/usr/bin/env bash
# The whole test suite: set-up, lint, format check, types, import contract, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
scripts/bootstrap.sh
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
say "ruff check";         .venv/bin/ruff check .
say "ruff format --check"; .venv/bin/ruff format --check .
say "mypy";               .venv/bin/mypy
say "import contract";    .venv/bin/lint-imports
say "pytest";             .venv/bin/pytest "$@"
say "test suite done in $(( $(date +%s) - started ))s"
