#!/usr/bin/env bash
# The GPU checks of the RNN/attention strategies in one prepared run, for a lent GPU machine: its own Python
# (torch, jax, pandas, pytest, hypothesis; no TensorFlow, which stays CPU-verified), the project from the working
# tree. Usage there:
#   PYTHONPATH=$PWD bash scripts/gpu-check.sh "$OUT" [PHASE...]
# PHASE: env, check, gates, rnn, rnn-jax, rnn-jax-rest, attention, run in the order named (default: rnn-jax check
# rnn attention env gates rnn-jax-rest: JAX's RNN sweep and check first, its GPU goal being the one not yet shown
# met, then the rest of the benchmarks). Writes check.jsonl and bench.jsonl (copy them under results/gpu/ and commit them:
# `varlen report` reads every results/**/*.jsonl), one log per phase and nvidia-smi.txt (8 files at most, what a
# device call brings back). Each phase runs under its own time limit, cut to what is left of the whole run's budget
# (VARLEN_GPU_CHECK_BUDGET_S, default 540 s: one device call may run 600 s); a phase is not started with less than
# 30 s of the budget left, and says so. A device session has ~15 minutes in all, its start included: one call of
# the default phases, then (if time is left) a second one of the phases the first could not finish.
# VARLEN_GPU_CHECK_DEVICE=cpu runs the same commands on the CPU (a dry run).
set -uo pipefail
out=${1:-results/gpu}
shift || true
phases=("$@")
[[ ${#phases[@]} -gt 0 ]] || phases=(rnn-jax check rnn attention env gates rnn-jax-rest)
for name in "${phases[@]}"; do  # misuse stops before any work starts
    [[ " env check gates rnn rnn-jax rnn-jax-rest attention " == *" $name "* ]] || {
        echo "gpu-check.sh: unknown phase '$name' (env, check, gates, rnn, rnn-jax, rnn-jax-rest, attention)" >&2
        exit 2; }
done
mkdir -p "$out"
# JAX takes 75% of the GPU at its first use unless told not to: pytest (gates) runs torch beside it in one process
export PYTHONPATH=${PYTHONPATH:-$PWD} TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
dev=${VARLEN_GPU_CHECK_DEVICE:-gpu}
budget=${VARLEN_GPU_CHECK_BUDGET_S:-540}
min_phase=30
fws=(--framework torch --framework jax)
# --shared-worker: JAX's GPU cases in one process, not a fresh one each (their peak memory is then not recorded)
# VARLEN_STREAM_BATCHES=0: no fresh batches after each case to count the compiles new lengths bring (the minutes
# go to timing; JAX's GPU compiles take seconds each)
bench=(env VARLEN_STREAM_BATCHES=0 "$py" -m harness.cli bench --device "$dev" --shared-worker --timeout 120
       --out "$out/bench.jsonl")
profiles=(--profile equal --profile lognormal --profile zipf)
# JAX's RNN strategies (adapters/jax/rnn.py's STRATEGIES: tests/test_gpu_check.py keeps the two lists equal); its
# goal's: jax.experimental.rnn's cuDNN LSTM (what the goal is measured against), the unrolled padded scan (the
# fastest on equal lengths at d5b0564), the same program in CUDA graphs (scan_graph), the packed grid with its
# written-out gradient (concat_rows, unroll 8) and the same grid's loops as Pallas Triton kernels (concat_pallas),
# none of the last three timed on a GPU yet; the others are timed last. On the H200 one unroll-8 program took ~8 s
# to compile (scan_unroll8: 8.4 s, scan_flip at unroll 1: 1.1 s), and time_sliced compiles one scan per segment:
# the whole JAX sweep would not fit its phase.
jax_rnn=(scan scan_flip scan_unroll8 scan_graph cudnn_lstm bucketed time_sliced concat_rows concat_pallas)
jax_goal=(cudnn_lstm scan_unroll8 scan_graph concat_rows concat_pallas)
goal_flags=() rest_flags=()
for s in "${jax_goal[@]}"; do goal_flags+=(--strategy "$s"); done
for s in "${jax_rnn[@]}"; do [[ " ${jax_goal[*]} " == *" $s "* ]] || rest_flags+=(--strategy "$s"); done

phase() {  # phase LIMIT_S NAME COMMAND...: run it under min(LIMIT_S, budget left), append its output to the log
    # of NAME up to its first '-' (rnn-jax -> rnn.log: a call brings back 8 files), print its tail
    local limit=$1 name=$2 t0=$SECONDS rc left=$((budget - SECONDS))
    shift 2
    if (( left < min_phase )); then
        echo "== $name: not started, $left s of the ${budget} s budget left (a phase needs $min_phase s)"
        return 0
    fi
    (( limit > left )) && limit=$left
    local log="$out/${name%%-*}.log"
    echo "### $name: $*" >> "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"
    tail -n 6 "$log"
}

{ nvidia-smi || true; } > "$out/nvidia-smi.txt" 2>&1
for name in "${phases[@]}"; do
    case $name in
        env) phase 60 env "$py" -m harness.cli env ;;
        # the equivalence matrix and verdicts on the GPU (GPU tolerance row), side by side, one process each:
        # JAX's RNN family one per strategy (`varlen check --strategy`: its compiles, CPU-bound, made one process
        # need over 240 s for ~85% of the family on the H200 at d5b0564, before the skewed multi-plan case and the
        # unroll of 8 on the GPU; the family's recipe verdicts are then left to the CPU), its other families, and
        # torch's whole check (~35 s there at d5b0564, more now that flex compiles) beside them
        check) phase 270 check bash -c 'py=$0 dev=$1 out=$2; shift 2
            for s in "$@"; do
                "$py" -m harness.cli check --device "$dev" --framework jax --family rnn --strategy "$s" --out "$out" &
            done
            for f in ops embedding loss attention epoch; do
                "$py" -m harness.cli check --device "$dev" --framework jax --family "$f" --out "$out" & done
            "$py" -m harness.cli check --device "$dev" --framework torch --out "$out" &
            wait' "$py" "$dev" "$out/check.jsonl" "${jax_rnn[@]}" ;;
        # the RNN gates (every strategy, Hypothesis sizes; graph_loop's real CUDA graphs; concat_pallas's column
        # blocks, H > 128, through Triton) and bucketed attention
        gates) phase 270 gates "$py" -m pytest -q -p no:cacheprovider --device "$dev" tests/test_rnn.py \
            tests/test_graph_loop.py tests/test_pallas_rnn.py tests/test_attention_buckets.py -k "torch or jax" ;;
        # issue 13's points: B=64 T=128 H=128 forward + backward, torch LSTM and GRU (its goals), JAX LSTM (its
        # goal: against jax.experimental.rnn's cuDNN LSTM); attention B=32 T=512 (the headline); each sweep ends by
        # timing, side by side, its fastest strategies on equal lengths (which decide the padded baseline), then its
        # speedups against that baseline (harness/paired.py, ~3 s a pair)
        rnn) phase 200 rnn "${bench[@]}" --framework torch --op rnn_forward_backward --cell lstm --cell gru \
            --batch 64 --max-len 128 "${profiles[@]}" ;;
        rnn-jax) phase 240 rnn-jax "${bench[@]}" --framework jax --op rnn_forward_backward --cell lstm \
            --batch 64 --max-len 128 "${profiles[@]}" "${goal_flags[@]}" ;;
        # JAX's other RNN strategies, not side by side (the goal's sweep timed its pairs)
        rnn-jax-rest) phase 200 rnn-jax-rest "${bench[@]}" --no-side-by-side --framework jax \
            --op rnn_forward_backward --cell lstm --batch 64 --max-len 128 "${profiles[@]}" "${rest_flags[@]}" ;;
        attention) phase 200 attention "${bench[@]}" "${fws[@]}" --op attention_forward_backward --batch 32 \
            --max-len 512 "${profiles[@]}" ;;
    esac
done
exit 0
