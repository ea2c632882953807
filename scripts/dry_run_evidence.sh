#!/usr/bin/env bash
# Dry-run every committed evidence script (results/*/COMMAND.sh): each training command runs with --dry-run
# (nothing is trained or written), reports and other steps are skipped. Prints each command's summary line
# and fails when any run of the committed evidence would be (re)trained, i.e. when a run's identity (hash)
# changed. Usage: scripts/dry_run_evidence.sh [results/NAME/COMMAND.sh ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON_BIN:-$ROOT/.venv/bin/python}"
shim="$(mktemp)"; log="$(mktemp)"; trap 'rm -f "$shim" "$log"' EXIT
cat > "$shim" <<SHIM
#!/usr/bin/env bash
# run_bench.py training commands get --dry-run; reports, tables and other scripts are skipped
if [ "\${1:-}" = run_bench.py ] && [ "\${2:-}" != report ] && [ "\${2:-}" != deploy-bench ] && [ "\${2:-}" != robustness ]; then
  exec "$PYTHON" "\$@" --dry-run
fi
echo "  (skipped in a dry run: \$*)"
SHIM
chmod +x "$shim"
# a script's `| tee FILE` must not overwrite its committed output with the dry run's lines
tee() { cat; }
export -f tee
bad=0
for cmd in "${@:-results/*/COMMAND.sh}"; do
  for f in $cmd; do
    # only scripts that train (a run_bench.py line that is not report/bench/deploy-bench/evaluate/export)
    grep -E 'run_bench\.py' "$f" | grep -qvE 'run_bench\.py (report|bench|deploy-bench|evaluate|export|robustness)' || continue
    echo "== $f"
    PY="$shim" bash "$f" 2>&1 | command tee "$log" | grep -E "runs: |skipped in a dry run" || true
    if grep -q "would run" "$log" || ! grep -q "runs: " "$log"; then
      echo "   FAIL: $f would train runs (or planned none):"; grep "would run\|error" "$log" | head -5; bad=1
    fi
  done
done
exit "$bad"
