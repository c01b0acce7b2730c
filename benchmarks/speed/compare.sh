#!/usr/bin/env bash
# Run the speed suite and fail (exit 1) if a benchmark got slower than the saved baseline.
#
#   BENCH_THRESHOLD  allowed slowdown per benchmark (default 25%)
#   BENCH_STAT       the statistic compared (default min: the least-disturbed round, the
#                    steadiest on a machine that also runs other work; or median, mean)
#   PYTEST           the pytest to run (default .venv/bin/pytest)
# Extra arguments go to pytest (e.g. -k estimate).
#
# A fresh clone has no baseline, and pytest-benchmark's own answer to that is a bare exit
# code 4. Here it is said plainly, and this run is saved as the baseline instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
threshold="${BENCH_THRESHOLD:-25%}"
stat="${BENCH_STAT:-min}"
pytest="${PYTEST:-.venv/bin/pytest}"

baseline="$(ls .benchmarks/*/[0-9][0-9][0-9][0-9]_baseline.json 2>/dev/null | sort | tail -n 1 || true)"
if [[ -z "$baseline" ]]; then
    echo "bench-compare: no saved baseline (.benchmarks/*/NNNN_baseline.json) to compare against."
    echo "bench-compare: saving this run as the baseline; run 'make bench-compare' again to compare."
    exec "$pytest" benchmarks/speed --benchmark-save=baseline "$@"
fi
echo "bench-compare: comparing against $baseline; fails if a benchmark's $stat time grew by more than $threshold"
exec "$pytest" benchmarks/speed --benchmark-compare="$baseline" \
    --benchmark-compare-fail="$stat:$threshold" "$@"
