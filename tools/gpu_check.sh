#!/usr/bin/env bash
# The GPU check: everything lappdeploy can check on a machine lent with a GPU, in one run of under 8 minutes,
# with no internet access.
#
#   OUT=/path/to/results bash tools/gpu_check.sh     # on the GPU machine (OUT default: ./gpu_check_out)
#   bash tools/gpu_check.sh --cpu-smoke               # anywhere: tiny_resnet at 32 px, very short timings
#
# Steps, each under `timeout` with its own budget (seconds) and all of them under one total budget:
#   probe            what this Python has: torch + CUDA (device, capability), onnxruntime(-gpu) and whether its
#                    CUDA / TensorRT providers really open a session, tensorrt, ModelOpt, triton, pytest, trtexec
#   pytest-gpu       tests/gpu (pytest), in the background while the CPU-only steps below run; a skip when
#                    every test skipped itself (no CUDA)
#   build            a dense model with random weights and its uniform 0.5-MACs version (`lappdeploy compress
#                    --method uniform --epochs 0 --init-from DENSE`): no training, latency does not need it
#   export-onnx-*    `lappdeploy export` of both (checked ONNX)
#   bench steps      `lappdeploy bench DENSE PRUNED` (interleaved) on every runtime present: torch eager fp32 and
#                    fp16, ONNX Runtime CUDA, TensorRT engines fp16 and int8 (`export --trt` first), ONNX Runtime
#                    TensorRT provider, torch.compile (fp16)
# A step whose runtime is missing is skipped with its reason; a step that fails or runs past its own budget is
# a failure; one not started for lack of time, or cut short by the total budget, is a skip. OUT receives
# steps.tsv, environment.json, logs/, bench/<step>/bench.jsonl (the records), exports/ (export.json of every
# export) and the summary (summary.md, summary.json: what ran, what was skipped and why, median latency and the
# dense / pruned speed-up per runtime and batch).
# Exit status: 0 when every step passed or was skipped, 1 when a step failed, 130 when stopped by a signal
# (SIGINT / SIGTERM stop the running steps and still write the summary).
#
# Environment (all optional):
#   PYTHON                 interpreter [.venv/bin/python if it exists, else python3]; lappdeploy may be
#                          installed in it or only be this source tree (then it runs through PYTHONPATH)
#   OUT                    results directory [./gpu_check_out]
#   GPU_CHECK_BUDGET       total seconds for all steps [450; 600 with --cpu-smoke]
#   GPU_CHECK_SKIP         comma-separated step names or globs to skip, e.g. 'pytest-gpu,torch-compile'
#   GPU_CHECK_PYTEST_ARGS  what pytest-gpu runs [tests/gpu], e.g. 'tests/gpu/test_tensorrt.py -x'
#   GPU_CHECK_MODEL, GPU_CHECK_SHAPE, GPU_CHECK_CLASSES   [resnet50, 3x224x224, 1000]
#   GPU_CHECK_TARGET_MACS, GPU_CHECK_ROUND_TO             [0.5, 8: widths in multiples of 8 for Tensor Cores]
#   GPU_CHECK_BATCHES      batch sizes of the benches, also the TensorRT profile min,opt,max [1,8,32]
#   GPU_CHECK_SLOW_BATCHES batch sizes where every size costs a compile or an engine build (torch.compile,
#                          ONNX Runtime's TensorRT provider) [32]
#   GPU_CHECK_MIN_SECONDS, GPU_CHECK_MIN_SAMPLES, GPU_CHECK_WARMUP_SECONDS   timing per model and batch [1, 50, 1]
#   GPU_CHECK_CALIB_IMAGES INT8 calibration images [64]
#   GPU_CHECK_WORK         where models, ONNX files and engines go [a temporary directory, removed at the end]
#   GPU_CHECK_KEEP=1       keep that directory
#   GPU_CHECK_PIP_OFFLINE  0: never try `pip install --no-index -e .` when lappdeploy's dependencies are missing
#   GPU_CHECK_SMOKE=1      the same as --cpu-smoke
# shellcheck disable=SC2317 # functions run by `timeout` through `bash -c` look unreachable to shellcheck
set -uo pipefail # not -e: a failing step is recorded and the check goes on

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=${GPU_CHECK_SMOKE:-0}
for arg in "$@"; do
    case $arg in
        --cpu-smoke) SMOKE=1 ;;
        -h | --help)
            sed -n '2,/^# shellcheck/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "gpu_check.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
# Only what this script writes is cleared: bench appends to bench.jsonl, so stale records would mix in.
rm -rf "$OUT/logs" "$OUT/bench" "$OUT/exports" "$OUT/models"
rm -f "$OUT/steps.tsv" "$OUT/environment.json" "$OUT/summary.md" "$OUT/summary.json" "$OUT/gpu_check.log" \
    "$OUT/pytest_gpu.xml" "$OUT/probe.env"
mkdir -p "$OUT/logs" "$OUT/bench" "$OUT/exports" "$OUT/models"

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
PY=$PYTHON
[[ $PY == */* && -e $PY ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") # the script cds to the repo

if [[ $SMOKE == 1 ]]; then
    MODE=cpu-smoke
    MODEL=${GPU_CHECK_MODEL:-tiny_resnet}
    SHAPE=${GPU_CHECK_SHAPE:-3x32x32}
    CLASSES=${GPU_CHECK_CLASSES:-10}
    ROUND_TO=${GPU_CHECK_ROUND_TO:-1} # tiny_resnet is 8-32 channels wide: multiples of 8 cannot reach 0.5
    BATCHES=${GPU_CHECK_BATCHES:-1,2}
    SLOW_BATCHES=${GPU_CHECK_SLOW_BATCHES:-2}
    MIN_SECONDS=${GPU_CHECK_MIN_SECONDS:-0.05}
    MIN_SAMPLES=${GPU_CHECK_MIN_SAMPLES:-5}
    WARMUP_SECONDS=${GPU_CHECK_WARMUP_SECONDS:-0.02}
    CALIB_IMAGES=${GPU_CHECK_CALIB_IMAGES:-16}
    BUDGET=${GPU_CHECK_BUDGET:-600} # a slow shared CPU, not a time limit to keep
else
    MODE=gpu
    MODEL=${GPU_CHECK_MODEL:-resnet50}
    SHAPE=${GPU_CHECK_SHAPE:-3x224x224}
    CLASSES=${GPU_CHECK_CLASSES:-1000}
    ROUND_TO=${GPU_CHECK_ROUND_TO:-8}
    BATCHES=${GPU_CHECK_BATCHES:-1,8,32}
    SLOW_BATCHES=${GPU_CHECK_SLOW_BATCHES:-32}
    MIN_SECONDS=${GPU_CHECK_MIN_SECONDS:-1}
    MIN_SAMPLES=${GPU_CHECK_MIN_SAMPLES:-50}
    WARMUP_SECONDS=${GPU_CHECK_WARMUP_SECONDS:-1}
    CALIB_IMAGES=${GPU_CHECK_CALIB_IMAGES:-64}
    BUDGET=${GPU_CHECK_BUDGET:-450} # 7.5 min: under 8 with the summary and some slack
fi
TARGET_MACS=${GPU_CHECK_TARGET_MACS:-0.5}
PYTEST_ARGS=${GPU_CHECK_PYTEST_ARGS:-tests/gpu}
SKIP_LIST=${GPU_CHECK_SKIP:-}
RESERVE=15 # seconds kept for the summary
# Each step's own budget (s), under `timeout`: running past it is a failure. All steps also share the total
# (GPU_CHECK_BUDGET): a step starts only with half its budget left of it, and one cut short by it is a skip.
declare -A BUDGET_OF=(
    [probe]=60 [pytest-gpu]=180 [build]=120 [export-onnx-dense]=90 [export-onnx-pruned]=90 [ort-cpu]=60
    [torch-fp32]=60 [torch-fp16]=60 [ort-cuda]=75
    [trt-fp16-build-dense]=120 [trt-fp16-build-pruned]=120 [trt-fp16]=60
    [trt-int8-build-dense]=180 [trt-int8-build-pruned]=180 [trt-int8]=60
    [ort-tensorrt]=150 [torch-compile]=150
)

SAFE_MODEL=${MODEL//[^A-Za-z0-9_.-]/_}
DENSE=$SAFE_MODEL-dense
PRUNED=$SAFE_MODEL-uniform-$TARGET_MACS
OWN_WORK=0
if [[ -z ${GPU_CHECK_WORK:-} ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
    OWN_WORK=1
else
    WORK=$GPU_CHECK_WORK
    mkdir -p "$WORK" || exit 2
    rm -rf "${WORK:?}/$DENSE" "${WORK:?}/$PRUNED"
fi

cd "$REPO" || exit 2
export PY OUT WORK MODEL SHAPE CLASSES TARGET_MACS ROUND_TO DENSE PRUNED PYTEST_ARGS # for functions run by `timeout`
export NO_COLOR=1 TERM=dumb COLUMNS=160 PYTHONUNBUFFERED=1
T0=$SECONDS
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
declare -A STATUS=() # step -> pass | skip | fail
declare -A REASON=() # step -> why it was skipped or failed
declare -A HAVE=()   # probed capability -> 1 | 0
declare -A WHY=()    # probed capability -> why it is missing
STEP_INDEX=0
BENCH_STEPS=()
TRTEXEC="" TRTEXEC_VERSION=""
HAS_TIMEOUT=1
command -v timeout >/dev/null 2>&1 || HAS_TIMEOUT=0

say() {
    local line
    line=$(printf '[%4ds] %s' "$((SECONDS - T0))" "$*")
    printf '%s\n' "$line"
    printf '%s\n' "$line" >>"$OUT/gpu_check.log"
}

one_line() { # text on one line, no tabs, at most 400 characters (for steps.tsv)
    local text=${1//$'\t'/ }
    text=${text//$'\r'/ }
    text=${text//$'\n'/ | }
    printf '%s' "${text:0:400}"
}

last_line() { # the last non-empty line of a log (why a step failed)
    grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 || true
}

record() { # record NAME STATUS SECONDS BUDGET RC REASON DETAIL
    STATUS[$1]=$2
    REASON[$1]=$6
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$STEP_INDEX" "$1" "$2" "$3" "$4" "$5" \
        "$(one_line "$6")" "logs/$1.log" "$(one_line "$7")" >>"$OUT/steps.tsv"
    say "$1: $2${6:+ - $(one_line "$6")}"
}

skipped_by_user() {
    local pattern
    local -a patterns
    IFS=, read -r -a patterns <<<"$SKIP_LIST"
    for pattern in "${patterns[@]}"; do
        # shellcheck disable=SC2053 # the right-hand side is a glob on purpose
        [[ -n $pattern && $1 == $pattern ]] && return 0
    done
    return 1
}

missing() { # prints why the first unmet requirement is unmet; nothing when all are met
    local need
    for need in "$@"; do
        case $need in
            step:*)
                local step=${need#step:}
                if [[ ${STATUS[$step]:-} != pass ]]; then
                    echo "needs step $step, which did not pass (${STATUS[$step]:-not run}: ${REASON[$step]:-})"
                    return
                fi
                ;;
            *)
                if [[ ${HAVE[$need]:-0} != 1 ]]; then
                    echo "${WHY[$need]:-$need not found}"
                    return
                fi
                ;;
        esac
    done
}

# run_step [--skip-rc N:REASON] NAME SKIP_REASON CMD... : run CMD (a program or a function of this script)
# under `timeout`, log to logs/NAME.log, record pass (exit 0), skip (SKIP_REASON non-empty, GPU_CHECK_SKIP,
# no time left, or exit N; REASON @FILE: the reason is that file's text) or fail. Its timeout is the smaller
# of its budget (BUDGET_OF) and what is left of the total.
run_step() {
    local skip_rc="" skip_rc_reason=""
    if [[ $1 == --skip-rc ]]; then
        skip_rc=${2%%:*}
        skip_rc_reason=${2#*:}
        shift 2
    fi
    local name=$1 reason=$2 budget=${BUDGET_OF[$1]}
    shift 2
    STEP_INDEX=$((STEP_INDEX + 1))
    local log="$OUT/logs/$name.log"
    if skipped_by_user "$name"; then
        record "$name" skip 0 "$budget" "" "skipped by GPU_CHECK_SKIP=$SKIP_LIST" ""
        return 0
    fi
    if [[ -n $reason ]]; then
        record "$name" skip 0 "$budget" "" "$reason" ""
        return 0
    fi
    # a step starts only with at least half its budget left of the total; cut short by the total (not by its
    # own budget) it is a skip, not a failure
    local left=$((BUDGET - (SECONDS - T0) - RESERVE))
    if ((left < budget / 2 || left < 10)); then
        record "$name" skip 0 "$budget" "" \
            "time budget: ${left}s of the ${BUDGET}s total left, it may need ${budget}s" ""
        return 0
    fi
    local limit=$budget
    ((left < limit)) && limit=$left
    say "$name: running (limit ${limit}s): $*"
    printf '$ %s\n# limit %ss (step budget %ss)\n' "$*" "$limit" "$budget" >"$log"
    local -a command=("$@")
    if declare -F "$1" >/dev/null; then # a function of this script: `timeout` runs programs only
        export -f "${1?}"
        command=(bash -c '"$@"' _ "$@")
    fi
    local started=$SECONDS rc pid
    if [[ $HAS_TIMEOUT == 1 ]]; then
        timeout --kill-after=10 "$limit" "${command[@]}" >>"$log" 2>&1 &
    else
        "${command[@]}" >>"$log" 2>&1 &
    fi
    pid=$!
    echo "$pid" >"$OUT/logs/$name.pid" # what the signal trap stops
    wait "$pid"
    rc=$?
    rm -f "$OUT/logs/$name.pid"
    if [[ $skip_rc_reason == @* ]]; then # the reason is in a file the command wrote
        skip_rc_reason=$(cat "${skip_rc_reason#@}" 2>/dev/null)
    fi
    local took=$((SECONDS - started))
    if ((rc == 0)); then
        record "$name" pass "$took" "$budget" "$rc" "" ""
    elif [[ -n $skip_rc && $rc == "$skip_rc" ]]; then
        record "$name" skip "$took" "$budget" "$rc" "$skip_rc_reason" ""
    elif ((rc == 124 || rc == 137)) && [[ $HAS_TIMEOUT == 1 ]] && ((limit < budget)); then
        record "$name" skip "$took" "$budget" "$rc" \
            "time budget: stopped after ${limit}s, the end of the ${BUDGET}s total" ""
    elif ((rc == 124 || rc == 137)) && [[ $HAS_TIMEOUT == 1 ]]; then
        record "$name" fail "$took" "$budget" "$rc" "ran past its budget of ${budget}s" ""
    else
        record "$name" fail "$took" "$budget" "$rc" "exit code $rc: $(last_line "$log")" ""
    fi
    return 0
}

# ------------------------------------------------------------------------------------------ summary
summarize() { # summarize PYTHON VERDICT (pass | fail | interrupted): summary.json and summary.md
    GPU_CHECK_BENCH_STEPS=$(IFS=,; echo "${BENCH_STEPS[*]}") "$1" - "$OUT" "$MODE" "$BUDGET" "$((SECONDS - T0))" \
        "$STARTED_AT" "$2" "$MODEL" "$SHAPE" "$TARGET_MACS" "$ROUND_TO" "$MIN_SECONDS" "$MIN_SAMPLES" \
        "$WARMUP_SECONDS" <<'EOF'
import json
import os
import sys
from collections import defaultdict

out, mode, budget, elapsed, started, verdict, model, shape, target, round_to, min_s, min_n, warm = sys.argv[1:14]
steps, seen = [], set()
with open(os.path.join(out, "steps.tsv")) as f:
    for line in f:
        index, name, status, seconds, step_budget, rc, reason, log, detail = line.rstrip("\n").split("\t")
        if name in seen:  # a step stopped by a signal: its first record says so
            continue
        seen.add(name)
        steps.append({"step": name, "status": status, "seconds": int(seconds or 0), "budget_s": int(step_budget),
                      "exit_code": int(rc) if rc else None, "reason": reason, "log": log, "detail": detail,
                      "order": int(index)})
steps.sort(key=lambda s: s["order"])
try:
    with open(os.path.join(out, "environment.json")) as f:
        environment = json.load(f)
except (OSError, ValueError):
    environment = {}

pytest_counts = {}
try:
    with open(os.path.join(out, "logs", "pytest-gpu.counts")) as f:
        pytest_counts = {k: int(v) for k, v in (item.split("=") for item in f.read().split())}
except (OSError, ValueError):
    pass

runtimes = []
bench_steps = os.environ["GPU_CHECK_BENCH_STEPS"].split(",")
for step in steps:
    if step["step"] not in bench_steps:
        continue
    records_path = os.path.join(out, "bench", step["step"], "bench.jsonl")
    records = []
    if os.path.isfile(records_path):
        with open(records_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    entry = {"step": step["step"], "status": step["status"], "reason": step["reason"], "rows": []}
    groups = defaultdict(dict)
    for r in records:
        side = "dense" if r["is_dense"] else "pruned"
        groups[(r["runtime"], r["provider"], r["precision"], r["device"], r["batch"])][side] = r
    for (runtime, provider, precision, device, batch), pair in sorted(groups.items(), key=lambda kv: kv[0][4]):
        dense, pruned = pair.get("dense"), pair.get("pruned")
        row = {"runtime": runtime, "provider": provider, "precision": precision, "device": device, "batch": batch}
        for side, r in (("dense", dense), ("pruned", pruned)):
            if r:
                row[f"{side}_median_ms"] = r["latency_median_ms"]
                row[f"{side}_p90_ms"] = r["latency_p90_ms"]
                row[f"{side}_samples"] = r["samples"]
                row[f"{side}_macs"] = r["macs"]
                row[f"{side}_throughput_ips"] = r["throughput_ips"]
                row["device_name"] = r["device_name"]
                row["timing"] = r["timing"]
                row["tf32"], row["cuda_graph"] = r.get("tf32"), r.get("cuda_graph")
        if dense and pruned:
            row["speedup"] = round(dense["latency_median_ms"] / pruned["latency_median_ms"], 3)
            row["macs_ratio"] = round(pruned["macs"] / dense["macs"], 4)
        entry["rows"].append(row)
    runtimes.append(entry)

counts = {s: sum(1 for step in steps if step["status"] == s) for s in ("pass", "skip", "fail")}
on_gpu = [r for r in runtimes if r["step"] != "ort-cpu"]
summary = {
    "status": verdict,
    "mode": mode,
    "started_at": started,
    "elapsed_s": int(elapsed),
    "budget_s": int(budget),
    "model": {"architecture": model, "input_shape": shape, "target_macs": float(target), "round_to": round_to,
              "weights": "random (latency does not depend on them)"},
    "timing": {"min_seconds": float(min_s), "min_samples": int(min_n), "warmup_seconds": float(warm),
               "note": "short timings: a check, not a benchmark"},
    "counts": counts,
    "steps": steps,
    "pytest_gpu": pytest_counts,
    "gpu_runtimes_timed": sum(1 for r in on_gpu if r["status"] == "pass"),
    "gpu_runtimes": len(on_gpu),
    "runtimes_ran": [r["step"] for r in runtimes if r["status"] == "pass"],
    "runtimes_skipped": {r["step"]: r["reason"] for r in runtimes if r["status"] == "skip"},
    "runtimes_failed": {r["step"]: r["reason"] for r in runtimes if r["status"] == "fail"},
    "runtimes": runtimes,
    "environment": environment,
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)


def cell(value, digits=3):
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


env = environment
md = [
    f"# GPU check: {summary['status'].upper()}",
    "",
    f"Mode {mode}; {counts['pass']} steps passed, {counts['skip']} skipped, {counts['fail']} failed; "
    f"{elapsed} s of a {budget} s budget; started {started}.",
    "",
    f"- GPU runtimes timed: {summary['gpu_runtimes_timed']} of {summary['gpu_runtimes']}",
    f"- device: {env.get('gpu') or 'no CUDA GPU'}"
    + (f" (capability {env['gpu_capability']}, {env.get('gpu_memory_gib')} GiB)" if env.get("gpu_capability") else "")
    + (f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else ""),
    f"- python {env.get('python_version', '?')} ({env.get('python', '?')}); lappdeploy {env.get('lappdeploy', '?')} "
    f"({env.get('lappdeploy_from', '?')})",
    f"- torch {env.get('torch', 'missing')} (CUDA build {env.get('torch_cuda_build')}); onnxruntime "
    f"{env.get('onnxruntime', 'missing')} {env.get('onnxruntime_providers', '')}; tensorrt "
    f"{env.get('tensorrt', 'missing')}; ModelOpt {'present' if env.get('have', {}).get('modelopt') else 'missing'}; "
    f"trtexec {env.get('trtexec') or 'missing'} {env.get('trtexec_version') or ''}",
    f"- model: {model} at {shape}, dense vs uniform {target} of its MACs (widths rounded to {round_to}), "
    "random weights",
    f"- timing per model and batch: >= {min_s} s and >= {min_n} calls after >= {warm} s of warm-up; short timings "
    "for a check, not a benchmark",
    "",
    "## Steps",
    "",
    "| step | status | s | budget s | why / note |",
    "|---|---|---|---|---|",
]
for s in steps:
    note = s["reason"] or s["detail"]
    md.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {s['budget_s']} | {note.replace('|', '/')} |")
if pytest_counts:
    md += ["", "tests/gpu: " + ", ".join(f"{v} {k}" for k, v in pytest_counts.items())]
md += ["", "## Latency: dense vs pruned", ""]
rows = [(r, row) for r in runtimes for row in r["rows"]]
if rows:
    md += ["| runtime | provider | precision | batch | dense median ms | pruned median ms | speed-up | MACs ratio | "
           "dense p90 ms | pruned p90 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r, row in rows:
        md.append(
            f"| {r['step']} | {row['provider']} | {row['precision']} | {row['batch']} | "
            f"{cell(row.get('dense_median_ms'))} | {cell(row.get('pruned_median_ms'))} | "
            f"{cell(row.get('speedup'), 2)} | {cell(row.get('macs_ratio'))} | {cell(row.get('dense_p90_ms'))} | "
            f"{cell(row.get('pruned_p90_ms'))} |"
        )
    md += ["", "speed-up = dense median / pruned median, timed interleaved in one `lappdeploy bench` call; "
           "MACs ratio = pruned / dense MACs per image. Records: bench/STEP/bench.jsonl."]
else:
    md.append("No runtime was timed.")
skipped = [r for r in runtimes if r["status"] != "pass"]
if skipped:
    md += ["", "## Runtimes not timed", ""]
    md += [f"- {r['step']} ({r['status']}): {r['reason']}" for r in skipped]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
EOF
}

finish() { # finish [interrupted]: the summary, the work directory, the exit status
    trap - INT TERM
    local verdict=pass code=0 interpreter summarized=0
    if awk -F'\t' '$3 == "fail" {found = 1} END {exit !found}' "$OUT/steps.tsv" 2>/dev/null; then
        verdict=fail code=1
    fi
    [[ ${1:-} == interrupted ]] && verdict=interrupted code=130
    [[ -n $TRTEXEC ]] &&
        say "trtexec: $TRTEXEC ${TRTEXEC_VERSION:-(version not read)} (found, not run)"
    for interpreter in "$PY" python3; do
        if command -v "$interpreter" >/dev/null 2>&1 &&
            summarize "$interpreter" "$verdict" >"$OUT/logs/summary.log" 2>&1; then
            summarized=1
            break
        fi
    done
    if [[ $summarized == 0 ]]; then # no working Python at all: the steps table alone
        {
            echo "# GPU check: ${verdict^^}"
            echo
            echo "No Python could write the full summary (logs/summary.log)."
            echo "Steps (index, step, status, s, budget, exit, why):"
            echo
            sed 's/^/    /' "$OUT/steps.tsv"
        } >"$OUT/summary.md"
        printf '{"status": "%s", "mode": "%s", "note": "no Python could write the full summary; see steps.tsv"}\n' \
            "$verdict" "$MODE" >"$OUT/summary.json"
    fi
    cat "$OUT/summary.md" >>"$OUT/gpu_check.log"
    say "summary: $OUT/summary.md and $OUT/summary.json"
    if [[ $OWN_WORK == 1 && ${GPU_CHECK_KEEP:-0} != 1 ]]; then
        rm -rf "$WORK"
    else
        say "models, ONNX files and engines kept in $WORK"
    fi
    case $verdict in
        pass) say "PASS: every step passed or was skipped" ;;
        fail) say "FAIL: a step failed (see the steps above and logs/)" ;;
        *) say "INTERRUPTED: the summary holds the steps that ended" ;;
    esac
    exit "$code"
}

on_signal() { # stop the running steps (their `timeout` passes the signal on to the whole command), summarize
    local file name
    say "interrupted: stopping the running steps"
    for file in "$OUT"/logs/*.pid; do
        [[ -f $file ]] || continue
        kill -TERM "$(cat "$file")" 2>/dev/null
        name=$(basename "$file" .pid)
        record "$name" fail 0 "${BUDGET_OF[$name]:-0}" "" "interrupted by a signal" ""
        rm -f "$file"
    done
    wait
    finish interrupted
}
trap on_signal INT TERM

# ------------------------------------------------------------------------------------------- probe
# Where lappdeploy comes from: installed in this Python, or this source tree through PYTHONPATH.
LAPPDEPLOY_FROM="not importable"
probe_lappdeploy() { # prints the directory of the lappdeploy package this Python imports, from a neutral cwd
    (cd "$OUT" && "$PY" -c 'import os, lappdeploy; print(os.path.dirname(os.path.abspath(lappdeploy.__file__)))') \
        2>>"$OUT/logs/probe.log"
}
: >"$OUT/logs/probe.log"
if ! command -v "$PY" >/dev/null 2>&1; then
    WHY[python]="interpreter $PY not found"
else
    HAVE[python]=1
    found=$(probe_lappdeploy) || found=""
    if [[ $found == "$REPO/lappdeploy" ]]; then
        LAPPDEPLOY_FROM="installed in $PY (this tree, editable)"
    else
        [[ -n $found ]] && say "lappdeploy installed in $PY is another copy ($found): using this tree instead"
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        found=$(probe_lappdeploy) || found=""
        [[ $found == "$REPO/lappdeploy" ]] && LAPPDEPLOY_FROM="source tree $REPO (PYTHONPATH)"
    fi
    # Its dependencies (click, rich, yaml, torch, torch-pruning, onnx): when they are missing, an offline editable
    # install can only help where their wheels are already on this machine (pip's --find-links / PIP_FIND_LINKS).
    deps='import importlib.util as u, sys
sys.exit(not all(map(u.find_spec, ("click", "rich", "yaml", "torch", "torch_pruning", "onnx"))))'
    if ! "$PY" -c "$deps" >>"$OUT/logs/probe.log" 2>&1 &&
        [[ ${GPU_CHECK_PIP_OFFLINE:-1} == 1 ]] && "$PY" -m pip --version >/dev/null 2>&1; then
        say "lappdeploy's dependencies are missing in $PY: trying an offline install (pip install --no-index -e .)"
        timeout 120 "$PY" -m pip install --no-index --no-build-isolation -e . >"$OUT/logs/pip-offline.log" 2>&1 ||
            say "offline install failed (logs/pip-offline.log): no downloads are tried"
    fi
fi
# ONNX Runtime's TensorRT provider loads libnvinfer by name: the pip TensorRT keeps it in tensorrt_libs.
if [[ ${HAVE[python]:-0} == 1 ]]; then
    trt_libs=$("$PY" -c 'import importlib.util as u
s = u.find_spec("tensorrt_libs")
print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else "")' 2>/dev/null) || trt_libs=""
    if [[ -n $trt_libs && -d $trt_libs ]]; then
        export LD_LIBRARY_PATH="$trt_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        say "LD_LIBRARY_PATH starts with $trt_libs (the pip TensorRT's libraries, for ONNX Runtime's TensorRT provider)"
    fi
fi

TRTEXEC=$(command -v trtexec 2>/dev/null || true)
[[ -z $TRTEXEC && -x /usr/src/tensorrt/bin/trtexec ]] && TRTEXEC=/usr/src/tensorrt/bin/trtexec
TRTEXEC_VERSION=""
if [[ -n $TRTEXEC ]]; then
    TRTEXEC_VERSION=$(timeout 30 "$TRTEXEC" --help 2>&1 | grep -m 1 -o 'TensorRT v[0-9.]*' || true)
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi >"$OUT/logs/nvidia-smi.txt" 2>&1 || true
fi

export LAPPDEPLOY_FROM TRTEXEC TRTEXEC_VERSION
probe_python() { # writes environment.json and probe.env (capability=1|0 and why.capability=reason lines)
    "$PY" - "$OUT/environment.json" "$OUT/probe.env" "$LAPPDEPLOY_FROM" "$TRTEXEC" "$TRTEXEC_VERSION" <<'EOF'
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys

env_path, flags_path, lappdeploy_from, trtexec, trtexec_version = sys.argv[1:6]
env = {"python": sys.executable, "python_version": platform.python_version(), "platform": platform.platform(),
       "lappdeploy_from": lappdeploy_from, "trtexec": trtexec or None, "trtexec_version": trtexec_version or None,
       "pythonpath": os.environ.get("PYTHONPATH", "")}
have, why = {}, {}


def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def error(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


try:
    import lappdeploy
    import lappdeploy.cli  # noqa: F401  (click, rich, yaml)

    env["lappdeploy"] = lappdeploy.__version__
    env["lappdeploy_path"] = os.path.dirname(os.path.abspath(lappdeploy.__file__))
    have["lappdeploy"] = 1
except Exception as exc:  # noqa: BLE001
    why["lappdeploy"] = f"lappdeploy is not importable by {sys.executable} ({error(exc)})"

cuda = False
try:
    import torch

    env["torch"] = torch.__version__
    env["torch_cuda_build"] = torch.version.cuda
    have["torch"] = 1
    cuda = torch.cuda.is_available()
    if cuda:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        env["gpu_count"] = torch.cuda.device_count()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["cudnn"] = torch.backends.cudnn.version()
        have["cuda"] = 1
    elif torch.version.cuda is None:
        why["cuda"] = f"no CUDA: torch {torch.__version__} is a CPU-only build"
    else:
        why["cuda"] = (f"no CUDA: torch.cuda.is_available() is False (torch {torch.__version__} built for CUDA "
                       f"{torch.version.cuda}; no visible GPU, or the driver is too old)")
except Exception as exc:  # noqa: BLE001
    why["torch"] = why["cuda"] = f"torch is not importable ({error(exc)})"
env["cuda_available"] = bool(cuda)
why.setdefault("cuda", "no CUDA")

if found("triton"):
    have["triton"] = 1 if cuda else 0
    why["triton"] = why["cuda"]
else:
    why["triton"] = "torch.compile on a GPU needs triton, which is not installed"

have["pytest"] = int(found("pytest"))
why["pytest"] = f"pytest is not installed in {sys.executable}"
have["modelopt"] = int(found("modelopt"))
why["modelopt"] = "needs NVIDIA ModelOpt (pip install 'lappdeploy[modelopt]') for the INT8 Q/DQ and FP16 graphs"


def one_node_model():
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime >= 1.14 reads
    return model.SerializeToString()


def provider_opens(ort, providers, name):
    """ONNX Runtime lists every provider it was built with; a session shows whether it really loads (it
    falls back to the CPU when the CUDA / cuDNN / TensorRT libraries are missing)."""
    import numpy as np

    session = ort.InferenceSession(one_node_model(), providers=providers)
    active = session.get_providers()
    session.run(None, {"x": np.ones((1, 8), dtype=np.float32)})
    return active[0] == name, active


try:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    env["onnxruntime"] = ort.__version__
    env["onnxruntime_providers"] = providers
    have["ort"] = 1 if found("onnx") else 0
    why["ort"] = "onnx is not installed"
    for key, name, chain in (
        ("ort_cuda", "CUDAExecutionProvider", ["CUDAExecutionProvider"]),
        ("ort_trt", "TensorrtExecutionProvider", ["TensorrtExecutionProvider", "CUDAExecutionProvider"]),
    ):
        if name not in providers:
            why[key] = (f"onnxruntime {ort.__version__} has no {name} (it has {', '.join(providers)}): "
                        "install onnxruntime-gpu (lappdeploy[ort-gpu]) instead of onnxruntime")
        elif not cuda:
            why[key] = why["cuda"]
        else:
            try:
                ok, active = provider_opens(ort, chain, name)
                have[key] = int(ok)
                why[key] = (f"onnxruntime lists {name} but a session fell back to {', '.join(active)} "
                            "(its CUDA / cuDNN / TensorRT libraries are missing)")
            except Exception as exc:  # noqa: BLE001
                why[key] = f"onnxruntime lists {name} but a session on it failed ({error(exc)})"
        env[f"{key}_usable"] = bool(have.get(key))
except Exception as exc:  # noqa: BLE001
    why["ort"] = why["ort_cuda"] = why["ort_trt"] = f"onnxruntime is not importable ({error(exc)})"

try:
    import tensorrt as trt

    env["tensorrt"] = trt.__version__
    major = int(trt.__version__.split(".")[0])
    env["tensorrt_family"] = str(min(major, 11)) if major >= 10 else ".".join(trt.__version__.split(".")[:2])
    have["tensorrt"] = 1 if cuda else 0
    why["tensorrt"] = why["cuda"]
    # 11 is strongly typed: its FP16 engine is built from ModelOpt's FP16 graph
    have["trt_fp16_graph"] = 1 if major < 11 else have["modelopt"]
    why["trt_fp16_graph"] = why["modelopt"]
except Exception as exc:  # noqa: BLE001
    why["tensorrt"] = why["trt_fp16_graph"] = f"the tensorrt Python package is not importable ({error(exc)})"

if shutil.which("nvidia-smi"):
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        env["nvidia_smi"] = dict(zip(query.split(","), (v.strip() for v in out.splitlines()[0].split(","))))
    except Exception as exc:  # noqa: BLE001
        env["nvidia_smi"] = error(exc)

env["have"] = {k: bool(v) for k, v in sorted(have.items())}
env["why_not"] = {k: v for k, v in sorted(why.items()) if not have.get(k)}
with open(env_path, "w") as f:
    json.dump(env, f, indent=2)
with open(flags_path, "w") as f:
    for key in sorted(set(have) | set(why)):
        f.write(f"{key}={have.get(key, 0)}\n")
        if not have.get(key):
            f.write(f"why.{key}={why.get(key, key + ' not found')}\n".replace("\t", " "))
print(json.dumps(env, indent=2))
EOF
}

read_probe() {
    local key value
    while IFS='=' read -r key value; do
        case $key in
            why.*) WHY[${key#why.}]=$value ;;
            ?*) HAVE[$key]=$value ;;
        esac
    done <"$OUT/probe.env"
    if [[ ${HAVE[lappdeploy]:-0} != 1 ]]; then
        WHY[lappdeploy]=${WHY[lappdeploy]:-lappdeploy is not importable by $PY}
    fi
}

STEP_INDEX=$((STEP_INDEX + 1))
say "probe: $PY (lappdeploy: $LAPPDEPLOY_FROM)"
probe_started=$SECONDS
if [[ ${HAVE[python]:-0} != 1 ]]; then
    record probe fail 0 "${BUDGET_OF[probe]}" 127 "${WHY[python]}" ""
    WHY[lappdeploy]=${WHY[python]}
elif export -f probe_python &&
    timeout --kill-after=10 "${BUDGET_OF[probe]}" bash -c probe_python >>"$OUT/logs/probe.log" 2>&1; then
    read_probe
    if [[ ${HAVE[lappdeploy]:-0} == 1 && ${HAVE[torch]:-0} == 1 ]]; then
        record probe pass "$((SECONDS - probe_started))" "${BUDGET_OF[probe]}" 0 "" ""
    else
        # lappdeploy and torch are what the check checks: without them nothing below can run
        record probe fail "$((SECONDS - probe_started))" "${BUDGET_OF[probe]}" 1 "$(missing lappdeploy torch)" ""
    fi
else
    rc=$?
    record probe fail "$((SECONDS - probe_started))" "${BUDGET_OF[probe]}" "$rc" \
        "the probe failed: $(last_line "$OUT/logs/probe.log")" ""
    WHY[lappdeploy]="the probe failed"
fi
say "runtimes: cuda=${HAVE[cuda]:-0} ort_cuda=${HAVE[ort_cuda]:-0} ort_trt=${HAVE[ort_trt]:-0}" \
    "tensorrt=${HAVE[tensorrt]:-0} modelopt=${HAVE[modelopt]:-0} triton=${HAVE[triton]:-0} trtexec=${TRTEXEC:-none}"

LAPP=("$PY" -m lappdeploy)
BENCH_TIMING=(--min-seconds "$MIN_SECONDS" --min-samples "$MIN_SAMPLES" --warmup-seconds "$WARMUP_SECONDS" --no-plot)

# ------------------------------------------------------------------------------------- pytest-gpu
# In the background while build and export keep the CPU busy; waited for before any timing starts.
pytest_gpu() { # exit 99 (a skip, reason in logs/pytest-gpu.skip) when no test ran: all skipped (no CUDA)
    local -a paths
    read -r -a paths <<<"$PYTEST_ARGS"
    "$PY" -m pytest -q -p no:cacheprovider -rs "${paths[@]}" --junitxml "$OUT/pytest_gpu.xml"
    local rc=$? log="$OUT/logs/pytest-gpu.log" line count kind
    line=$(grep -E '^[=[:space:]]*[0-9]+ (passed|skipped|failed|errors?|deselected)' "$log" | tail -n 1)
    for kind in passed skipped failed errors; do
        count=$(grep -o -E "[0-9]+ ${kind%s}s?" <<<"$line" | grep -o -E '[0-9]+')
        printf '%s=%s\n' "$kind" "${count:-0}"
    done >"$OUT/logs/pytest-gpu.counts"
    if ((rc == 5)); then
        echo "pytest collected no test in $PYTEST_ARGS" >"$OUT/logs/pytest-gpu.skip"
        return 99
    fi
    if ((rc == 0)) && ! grep -q -E '[0-9]+ passed' <<<"$line" && grep -q -E '[0-9]+ skipped' <<<"$line"; then
        printf 'no test ran: %s (%s)' "$(grep -o -E '[0-9]+ skipped' <<<"$line")" \
            "$(grep -m 1 '^SKIPPED' "$log" | sed 's/^SKIPPED \[[0-9]*\] //')" >"$OUT/logs/pytest-gpu.skip"
        return 99
    fi
    return "$rc"
}
run_step --skip-rc "99:@$OUT/logs/pytest-gpu.skip" pytest-gpu "$(missing lappdeploy pytest)" pytest_gpu \
    >/dev/null &
PYTEST_PID=$!
STEP_INDEX=$((STEP_INDEX + 1)) # the index the background step took

# ----------------------------------------------------------------------------------------- build
build_models() { # dense (random weights) and uniform TARGET_MACS, as run directories in WORK
    "$PY" - "$MODEL" "$SHAPE" "$CLASSES" "$TARGET_MACS" "$ROUND_TO" "$WORK/$DENSE" "$WORK/$PRUNED" <<'EOF'
import sys
from pathlib import Path

import torch
import yaml

from lappdeploy.cli import main
from lappdeploy.config import TrainConfig
from lappdeploy.models import create_model, model_card
from lappdeploy.surgery import save_model

arch, shape_text, classes, target, round_to, dense, pruned = sys.argv[1:8]
shape = tuple(int(s) for s in shape_text.split("x"))
dense = Path(dense)
dense.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = create_model(arch, num_classes=int(classes), in_channels=shape[0]).eval()
mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
save_model(model, dense / "model.pt", model_card(model, input_shape=shape, mean=mean, std=std, dataset="synthetic"))
# the run's data (synthetic images of this shape), for INT8 calibration
config = TrainConfig(model=arch, dataset="synthetic", synthetic_shape=shape, synthetic_classes=int(classes),
                     synthetic_samples=64)
(dense / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
print(f"dense: {dense}")
# the uniform method with its rounding and landing, as a user runs it, without training (--epochs 0)
main(["compress", "--model", arch, "--dataset", "synthetic", "--synthetic-shape", shape_text,
      "--synthetic-classes", classes, "--synthetic-samples", "64", "--method", "uniform", "--target-macs", target,
      "--round-to", round_to, "--epochs", "0", "--prune-epochs", "0", "--init-from", str(dense), "--device", "cpu",
      "--out", pruned, "--force"])
EOF
}
run_step build "$(missing lappdeploy)" build_models
if [[ ${STATUS[build]} == pass ]]; then
    cp "$WORK/$PRUNED/report.json" "$OUT/models/$PRUNED.report.json" 2>/dev/null
    cp "$WORK/$PRUNED/plan.json" "$OUT/models/$PRUNED.plan.json" 2>/dev/null
fi

# ----------------------------------------------------------------------------------------- export
keep_export_json() { # keep_export_json SIDE STEP: export.json of that step, which the next export rewrites
    [[ ${STATUS[$2]:-} == pass ]] || return 0
    mkdir -p "$OUT/exports/${RUN_OF[$1]}"
    cp "$WORK/${RUN_OF[$1]}/export/export.json" "$OUT/exports/${RUN_OF[$1]}/$2.json" 2>/dev/null || true
}
declare -A RUN_OF=([dense]=$DENSE [pruned]=$PRUNED)
for side in dense pruned; do
    run_step "export-onnx-$side" "$(missing step:build)" "${LAPP[@]}" export "$WORK/${RUN_OF[$side]}" \
        --batch "$BATCHES"
    keep_export_json "$side" "export-onnx-$side"
done

say "waiting for pytest-gpu before timing anything"
wait "$PYTEST_PID"
STATUS[pytest-gpu]=$(awk -F'\t' '$2 == "pytest-gpu" {s = $3} END {print s}' "$OUT/steps.tsv")
if [[ -z ${STATUS[pytest-gpu]} ]]; then
    record pytest-gpu fail 0 "${BUDGET_OF[pytest-gpu]}" "" "the pytest step did not record a result" ""
elif [[ -f $OUT/logs/pytest-gpu.counts ]]; then
    say "pytest-gpu: ${STATUS[pytest-gpu]} ($(tr '\n' ' ' <"$OUT/logs/pytest-gpu.counts"))"
fi

# ------------------------------------------------------------------------------------------ benches
bench() { # bench STEP SKIP_REASON ARGS...: DENSE and PRUNED timed interleaved; records in bench/STEP
    local name=$1 reason=$2
    shift 2
    BENCH_STEPS+=("$name")
    run_step "$name" "$reason" "${LAPP[@]}" bench "$WORK/$DENSE" "$WORK/$PRUNED" "$@" \
        "${BENCH_TIMING[@]}" --out "$OUT/bench/$name"
}
exports=(step:export-onnx-dense step:export-onnx-pruned)
trt_build() { # trt_build PRECISION NEEDS...: one engine per model from its checked ONNX
    local precision=$1 side
    shift
    for side in dense pruned; do
        run_step --skip-rc "3:lappdeploy could not import tensorrt (it wrote trtexec.sh instead)" \
            "trt-$precision-build-$side" "$(missing "$@" "step:export-onnx-$side")" \
            "${LAPP[@]}" export "$WORK/${RUN_OF[$side]}" --no-onnx --trt --precision "$precision" \
            --batch "$BATCHES" --calib-images "$CALIB_IMAGES"
        keep_export_json "$side" "trt-$precision-build-$side"
    done
}

if [[ $MODE == cpu-smoke ]]; then # the path from export to records to summary, on the CPU
    bench ort-cpu "$(missing ort "${exports[@]}")" --runtime ort --device cpu --threads 1 --batch "$BATCHES"
fi
bench torch-fp32 "$(missing cuda step:build)" --runtime torch --device cuda --precision fp32 --batch "$BATCHES"
bench torch-fp16 "$(missing cuda step:build)" --runtime torch --device cuda --precision fp16 --batch "$BATCHES"
bench ort-cuda "$(missing cuda ort_cuda "${exports[@]}")" --runtime ort --ort-provider cuda --device cuda \
    --batch "$BATCHES"
trt_build fp16 cuda tensorrt trt_fp16_graph
bench trt-fp16 "$(missing step:trt-fp16-build-dense step:trt-fp16-build-pruned)" --runtime trt \
    --precision fp16 --batch "$BATCHES"
trt_build int8 cuda tensorrt modelopt
bench trt-int8 "$(missing step:trt-int8-build-dense step:trt-int8-build-pruned)" --runtime trt \
    --precision int8 --batch "$BATCHES"
# one engine per model and batch size inside ONNX Runtime: only the slow batch sizes
bench ort-tensorrt "$(missing cuda ort_trt "${exports[@]}")" --runtime ort --ort-provider tensorrt --device cuda \
    --batch "$SLOW_BATCHES"
# one compilation per model and batch size
bench torch-compile "$(missing cuda triton step:build)" --runtime torch --device cuda --precision fp16 \
    --compile --batch "$SLOW_BATCHES"

finish
