#!/usr/bin/env bash
# The GPU checks of the RNN/attention strategies in one prepared run, for a lent GPU machine: its own Python
# (torch, jax, pandas, pytest, hypothesis; no TensorFlow, which stays CPU-verified), the project from the working
# tree. Usage there (one call, or one call per phase when device time is short):
#   PYTHONPATH=$PWD bash scripts/gpu-check.sh "$OUT" [env] [check] [gates] [rnn] [attention]
# Writes check.jsonl and bench.jsonl (copy them under results/gpu/ and commit them: `varlen report` reads every
# results/**/*.jsonl), one log per phase and the device's facts; each phase has its own time limit so one slow
# phase cannot eat the others'. VARLEN_GPU_CHECK_DEVICE=cpu runs the same commands on the CPU (a dry run).
set -uo pipefail
out=${1:-results/gpu}
shift || true
phases=${*:-env check gates rnn attention}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-$PWD} TF_CPP_MIN_LOG_LEVEL=2
py=${PYTHON:-python3}
dev=${VARLEN_GPU_CHECK_DEVICE:-gpu}
fws=(--framework torch --framework jax)
bench=("$py" -m harness.cli bench --device "$dev" "${fws[@]}" --timeout 120 --out "$out/bench.jsonl")
profiles=(--profile equal --profile lognormal --profile zipf)

phase() {  # phase LIMIT_S NAME COMMAND...: run it if NAME was asked for, log to NAME.log, print its tail
    local limit=$1 name=$2 t0=$SECONDS rc
    shift 2
    [[ " $phases " == *" $name "* ]] || return 0
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"
    tail -n 6 "$out/$name.log"
}

{ nvidia-smi || true; } > "$out/nvidia-smi.txt" 2>&1
phase 60 env "$py" -m harness.cli env
# the equivalence matrix and verdicts on the GPU (GPU tolerance row)
phase 240 check "$py" -m harness.cli check --device "$dev" "${fws[@]}" --out "$out/check.jsonl"
# the RNN gates (every strategy, Hypothesis sizes; graph_loop's real CUDA graphs) and bucketed attention
phase 270 gates "$py" -m pytest -q -p no:cacheprovider --device "$dev" tests/test_rnn.py tests/test_graph_loop.py \
    tests/test_attention_buckets.py -k "torch or jax"
# issue 13's points: LSTM and GRU, B=64 T=128 H=128 forward + backward; attention B=32 T=512 (the headline); each
# sweep ends by timing its speedups (and the winners on equal lengths) again side by side (harness/paired.py,
# ~3 s a pair)
phase 380 rnn "${bench[@]}" --op rnn_forward_backward --cell lstm --cell gru --batch 64 --max-len 128 "${profiles[@]}"
phase 200 attention "${bench[@]}" --op attention_forward_backward --batch 32 --max-len 512 "${profiles[@]}"
exit 0
