#!/usr/bin/env bash
# Create .venv and install robustgen-bench with everything it needs (CPU is fine).
# Usage: scripts/setup.sh        # runtime
#        scripts/setup.sh test   # runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/pip install -q -e ".${extra}"
# torchattacks (the `torchattacks` extra of pyproject.toml; keep the pin equal) declares
# requests~=2.25.1, which would downgrade requests/idna/urllib3, and needs only torch, numpy and
# scipy: install it without its dependencies.
.venv/bin/pip install -q --no-deps torchattacks==3.5.1
