"""Token Recycling for `model.generate(custom_generate=<this repo or folder>, trust_remote_code=True)`.

transformers loads this file and calls its `generate(model, ...)` with `generate`'s own arguments. It only
adapts: the method is the `tr` library's (`tr.hf.generate`), which must be installed beside transformers.
Extra `generate` arguments `k`, `tree` and `start` choose the matrix width, the draft tree and the start.
"""

try:  # inside `try`, transformers' import check leaves `tr` to the message below
    from tr.hf import generate  # noqa: F401  (what transformers looks up in this module)
except ImportError as err:
    raise ImportError(
        "custom_generate needs the Token Recycling library (import name `tr`): install it from its repository, "
        "pip install 'token-recycling @ git+<the repository's URL>', or pip install . in a clone"
    ) from err
