"""Command-line tools over the library: the benchmark (`python -m tools.bench`), its target check
(`python -m tools.targets`), building a primed matrix (`python -m tools.priming`), the batch-invariance
check (`python -m tools.invariance`), the invariant attention's timings (`python -m tools.attention_timing`),
the app's load test (`python -m tools.load`) and the GPU checks (`bash tools/gpu_check.sh`)."""
