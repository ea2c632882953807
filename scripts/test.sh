#!/usr/bin/env bash
# Tests: create/reuse the venv with the test extra, then run pytest (arguments are passed on).
# pytest's "no tests collected" (exit 5) is a failure here, never a silent pass.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
cd "$ROOT"
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
