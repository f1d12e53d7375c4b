#!/usr/bin/env bash
# Regenerate constraints.txt: resolve every extra (.[dev,gemini,qlora,cloud]) in a clean virtualenv with no lock,
# then freeze what was installed (pip refuses an editable line in a constraints file, hence --exclude-editable).
# Usage: bash scripts/refresh_lock.sh   (then run the README's set-up and test commands; see CONTRIBUTING.md)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet -e ".[dev,gemini,qlora,cloud]"
{
    echo "# The lock: every package of .[dev,gemini,qlora,cloud], exactly pinned (Python 3.11, Linux x86_64)."
    echo "# Install with: pip install -c constraints.txt -e \".[dev]\"    Refresh with: bash scripts/refresh_lock.sh"
    "$tmp/venv/bin/pip" freeze --exclude-editable
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
