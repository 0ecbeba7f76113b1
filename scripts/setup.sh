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
# The robustbench extra after torchattacks (its wheel ships a stale robustbench/ copy that a later
# install would overwrite); the tests of the robustbench family then run (about 20 s here).
if [ "${1:-}" = "test" ]; then
  .venv/bin/pip install -q -e ".[robustbench]"
  # Overwritten by torchattacks' 2022 copy (no corruptions_3d)? Put robustbench 1.1.1's files back.
  .venv/bin/python -c "import importlib.util as u, pathlib as p; d = u.find_spec('robustbench').submodule_search_locations[0]; assert 'corruptions_3d' in (p.Path(d) / 'model_zoo' / 'enums.py').read_text()" 2>/dev/null \
    || .venv/bin/pip install -q --force-reinstall --no-deps robustbench==1.1.1
fi
