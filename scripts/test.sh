#!/usr/bin/env bash
# Tests: create/reuse the venv with the test extra, check the import contracts (lint-imports), then run
# pytest (arguments are passed on).
# BNNBENCH_EXTRAS=all also installs NVIDIA DALI (~0.5 GB) so its pipeline test runs instead of skipping.
# pytest's "no tests collected" (exit 5) is a failure here, never a silent pass.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" "${BNNBENCH_EXTRAS:-test}"
cd "$ROOT"
# the house's layering (pyproject.toml, [tool.importlinter]): a new upward import or cycle fails here
if ! contracts="$("$VENV/bin/lint-imports" --no-cache 2>&1)"; then
  echo "$contracts" >&2; echo "error: the import contracts are broken (see above)" >&2; exit 1
fi
echo "import contracts: $(grep -c ' KEPT$' <<<"$contracts") kept (lint-imports, pyproject.toml)"
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
