#!/usr/bin/env bash
# A benchmark lane: run cells on one CPU core in a scratch output directory, and park the
# fits still in progress in the repository so that a later sitting on another machine
# continues them.
#
#   benchmarks/lane.sh run OUT TASK METHOD "SEEDS" BUDGET   # e.g. run /tmp/outA dbpedia smc "1 2" 2000
#   benchmarks/lane.sh park OUT...                          # copy OUT/cells/*.fit into benchmarks/results/cells
#   benchmarks/lane.sh done OUT...                          # copy new "ok" records in, drop their parked fits
#
# `run` seeds OUT/cells with the committed records (so finished cells are not rerun) and with
# the parked fits of its own cells (so an unfinished cell continues from its last engine
# step; other cells' fits stay out, so a lane never parks a stale copy of them), then runs
# `python -m benchmarks.run` with one thread and bf16, as the committed cells were made.
# A scratch OUT keeps the committed results.md and results.json from being rewritten
# with the lane's one-cell selection. Parked fits larger than BAYESPROMPT_PARK_LIMIT_MB
# (default 20) are refused with a message: commit history keeps every parked copy. `park`
# also refuses a fit whose cell has an ok record, and one with fewer steps than its parked
# copy (lines of its diagnostics.jsonl files, or a white-box checkpoint's step), which
# another lane took further.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cells="$repo/benchmarks/results/cells"
limit_mb="${BAYESPROMPT_PARK_LIMIT_MB:-20}"

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

absolute() {  # OUT as an absolute path (the lane changes directory before benchmarks.run)
    realpath -m "$1"
}

run_lane() {
    [[ $# -eq 5 ]] || usage
    local out task="$2" method="$3" seeds="$4" budget="$5" seed fit
    out="$(absolute "$1")"
    mkdir -p "$out/cells"
    cp -n "$cells"/*.json "$out/cells/" 2>/dev/null || true
    for seed in $seeds; do  # only this lane's cells (budget-free methods are named budgetnone)
        for fit in "$cells/${task}__${method}__seed${seed}__budget${budget}__"*.fit \
                   "$cells/${task}__${method}__seed${seed}__budgetnone__"*.fit; do
            [[ -d "$fit" && ! -e "$out/cells/$(basename "$fit")" ]] && cp -r "$fit" "$out/cells/"
        done
    done
    cd "$repo"
    # shellcheck disable=SC2086  # SEEDS is a space-separated list
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 BAYESPROMPT_DATA="${BAYESPROMPT_DATA:-$repo/../shared/data}" \
        python -m benchmarks.run --out "$out" --tasks "$task" --methods "$method" --seeds $seeds \
        --budgets "$budget" --no-sweep --precision bf16
}

steps() {  # progress of a fit folder: engine steps, all stages of a chained fit together, plus the
    # step of a white-box checkpoint (benchmarks/whitebox.py writes no diagnostics); 0 if none yet
    local engine whitebox=0 checkpoint
    engine=$(find "$1" -name diagnostics.jsonl -exec cat {} + | wc -l)
    checkpoint="$(find "$1" -name whitebox.pt | head -n 1)"
    if [[ -n "$checkpoint" ]]; then
        whitebox=$(python -c 'import sys, torch; print(int(torch.load(sys.argv[1], weights_only=True)["step"]))' \
                   "$checkpoint")
    fi
    echo $((engine + whitebox))
}

park() {
    [[ $# -ge 1 ]] || usage
    local out fit size parked
    for out in "$@"; do
        out="$(absolute "$out")"
        if [[ "$out/cells" -ef "$cells" ]]; then
            echo "not parked: $out is the repository's own results folder" >&2
            continue
        fi
        for fit in "$out"/cells/*.fit; do
            [[ -d "$fit" ]] || continue
            size=$(du -sm "$fit" | cut -f1)
            if (( size > limit_mb )); then
                echo "not parked: $fit is $size MB (limit $limit_mb MB, BAYESPROMPT_PARK_LIMIT_MB)" >&2
                continue
            fi
            parked="$cells/$(basename "$fit")"
            if [[ -f "${parked%.fit}.json" && "$(status "${parked%.fit}.json")" == ok ]]; then
                echo "not parked: $(basename "$fit") has an ok record" >&2
                continue
            fi
            if [[ -d "$parked" ]] && (( $(steps "$fit") < $(steps "$parked") )); then
                echo "not parked: $fit has $(steps "$fit") steps, the parked copy $(steps "$parked")" >&2
                continue
            fi
            rm -rf "$parked"
            cp -r "$fit" "$cells/"
            echo "parked $(basename "$fit") ($size MB)"
        done
    done
}

status() {  # the "status" field of a cell record
    python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("status"))' "$1"
}

ok_records() {  # names of the records in a cells folder whose "status" is ok, one per line
    python - "$1" <<'PY'
import json, sys
from pathlib import Path

for record in sorted(Path(sys.argv[1]).glob("*.json")):
    try:
        status = json.loads(record.read_text()).get("status")
    except (OSError, ValueError) as err:
        print(f"skipped {record}: {err}", file=sys.stderr)
        continue
    if status == "ok":
        print(record.name)
PY
}

finish() {  # one python call per folder: a lane's OUT holds every committed record
    [[ $# -ge 1 ]] || usage
    local out name committed
    for out in "$@"; do
        committed="$(ok_records "$cells")"
        while IFS= read -r name; do
            [[ -n "$name" ]] || continue
            grep -qxF -- "$name" <<< "$committed" && continue  # a committed ok record stays
            cp "$out/cells/$name" "$cells/"
            rm -rf "$cells/${name%.json}.fit"
            echo "new record $name"
        done < <(ok_records "$out/cells")  # an error record is not taken: its fit stays for the rerun
    done
}

command="${1:-}"
shift || true
case "$command" in
    run) run_lane "$@" ;;
    park) park "$@" ;;
    done) finish "$@" ;;
    *) usage ;;
esac
