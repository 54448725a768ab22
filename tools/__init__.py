"""Command-line tools over the library: the benchmark (`python -m tools.bench`), its target check
(`python -m tools.targets`) and building a primed matrix (`python -m tools.priming`)."""
