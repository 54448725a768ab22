#!/usr/bin/env bash
# Our decoders against llama.cpp on this CPU: the 20-prompt Spec-Bench set (one prompt per category plus the
# project's seven), 128 new tokens, bf16, fp32 and int4 (4-bit layer weights, as llama.cpp's Q4_1), each on 1
# and on 2 threads, so each decoder is read at its best thread count. Run it on a quiet machine (about an
# hour on a 2-core host):
#
#   bash tools/cpu_bench.sh              # JSON under benchmarks/, named with today's date and the host's flags
#   STAMP=2026-12-07 DTYPES="bfloat16 int4" THREADS=2 bash tools/cpu_bench.sh
#
# Per run: ar (our plain decoding), hf (transformers' generate on our model), stock (generate on the model as
# transformers ships it; not in int4), llama:1 and llama:2 (llama.cpp on the bundled GGUF,
# tools/bench/llama.py, installed here into .llama/ if missing), tr:auto:primed. First the profile (python -m
# tools.profile, which also measures the memory bandwidth); last a table of every method's overall tokens/s at
# each thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=${STAMP:-$(date -u +%F)}
DTYPES=${DTYPES:-bfloat16 float32 int4}
THREADS=${THREADS:-1 2}
FLAGS=$(lscpu | grep -o -E 'avx2|avx512f|avx512_bf16|amx_bf16' | sort -u | paste -sd' ')
TAG=$(echo "$FLAGS" | grep -q amx_bf16 && echo amx || echo avx512bf16)
echo "host flags: $FLAGS"
[ -d .llama/node_modules/node-llama-cpp ] || npm install --prefix .llama --no-audit --no-fund node-llama-cpp@3.22.1
python -m tools.profile --steps 30 --levers 1 2 --json "benchmarks/profile-cpu-$TAG-$STAMP.json"
for dtype in $DTYPES; do
    stock=$([ "$dtype" = int4 ] || echo stock,)
    for threads in $THREADS; do
        OMP_NUM_THREADS=$threads python -m tools.bench --prompts ../shared/spec_bench/question.jsonl \
            assets/prompts.jsonl --per-category 1 --max-new-tokens 128 --dtype $dtype \
            --methods ar,hf,${stock}llama:1,llama:2,tr:auto:primed \
            --out "benchmarks/spec-bench-$dtype-cpu-$TAG-${threads}t-llama-$STAMP.json"
    done
done
python - "$TAG" "$STAMP" "$DTYPES" "$THREADS" <<'END'
import json, sys
tag, stamp, dtypes, thread_counts = sys.argv[1:]
for dtype in dtypes.split():
    rates = {}
    for threads in map(int, thread_counts.split()):
        data = json.load(open(f"benchmarks/spec-bench-{dtype}-cpu-{tag}-{threads}t-llama-{stamp}.json"))
        for row in data["table"]:
            if row["category"] == "overall":
                rates.setdefault(row["method"], {})[threads] = (row["tokens_per_s"], row["identical"], row["compared"])
    print(f"\n{dtype}: overall tokens/s on 1 / 2 threads (torch's threads; llama:N on N whatever the run), identical to ar")
    for method, by in rates.items():
        print(f"  {method:16s} " + "  ".join(f"{t}t {r:6.1f} ({i}/{c})" for t, (r, i, c) in sorted(by.items())))
    best = {method: max(r for r, _, _ in by.values()) for method, by in rates.items()}
    llama = max(v for m, v in best.items() if m.startswith("llama"))
    print(f"  best of each: ar {best['ar'] / llama:.2f}x llama.cpp's best, tr:auto:primed "
          f"{best['tr:auto:primed'] / llama:.2f}x llama.cpp's and {best['tr:auto:primed'] / best['ar']:.2f}x ar's")
END
