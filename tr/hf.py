"""Token Recycling where transformers users already decode: `model.generate(custom_generate=...)`.

`TokenRecycling` is a callable for `model.generate(**inputs, custom_generate=TokenRecycling())`: transformers
prepares the generation config, the logits processors and the stopping criteria, then hands them to it; it
decodes with this library's loop (`tr.generate.decode_steps`) and keeps one adjacency matrix per model and
tokenizer across calls (a hot start). `generate` is the entry of the hub-ready folder `custom_generate/`,
which transformers loads for `model.generate(custom_generate=<folder or hub repo>, trust_remote_code=True)`.

Tokens are picked as transformers' greedy and sampling loops pick them: the logits in float32, the prepared
logits processors applied to the text before each token (drafted tokens included), then the argmax or a
draw. So greedy output is `generate`'s token for token (where the model's kernels give a token the same bits
alone and inside a tree: the project's batch-invariant kernels on the CPU in float32 and bf16, which the
first call installs; any kernel in float64), and sampling keeps its distribution. What it cannot honour
(beams, an assistant model, a batch, ...) fails at once with one line naming the option.
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.generation import (GenerateDecoderOnlyOutput, LogitsProcessorList, StoppingCriteriaList,
                                     StopStringCriteria)
from transformers.generation.configuration_utils import GenerationMode

from .costs import CostCurve, LearnedCost
from .device import invariant, kernels
from .device.calibrate import device_curve
from .device.model import LoadedModel
from .device.primed import find_primed, tokenizer_fingerprint
from .generate import decode_steps
from .matrix import AdjacencyMatrix
from .records import Step
from .specs import Method, Start, TreeSpec, parse_start, parse_tree

log = logging.getLogger(__name__)

# What each generation mode transformers may choose needs, by the option that chose it.
MODE_OPTIONS = {
    GenerationMode.CONTRASTIVE_SEARCH: "penalty_alpha", GenerationMode.ASSISTED_GENERATION: "assistant_model",
    GenerationMode.DOLA_GENERATION: "dola_layers", GenerationMode.BEAM_SEARCH: "num_beams",
    GenerationMode.BEAM_SAMPLE: "num_beams", GenerationMode.GROUP_BEAM_SEARCH: "num_beam_groups",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "constraints",
}
ASSISTED_OPTIONS = ("prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp")
UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
# Model inputs `generate` prepares for any decoder-only call; anything else would be ignored, so it is refused.
PREPARED_INPUTS = {"attention_mask", "position_ids", "logits_to_keep", "past_key_values", "use_cache", "cache_position"}


class UnsupportedOption(ValueError):
    """A `generate` option Token Recycling cannot honour; the message names it."""


def _refuse(option: str, why: str) -> UnsupportedOption:
    return UnsupportedOption(f"Token Recycling (tr.hf) cannot honour {option}: {why}")


def _from_generate(name: str) -> Any:
    """A local of the calling `GenerationMixin.generate`. transformers 5.23 hands a callable `custom_generate`
    only its own extra arguments besides the prepared ones: it puts the prompt into `streamer` and checks
    `assistant_model`, but passes neither on. None where no such frame is found."""
    code = GenerationMixin.generate.__wrapped__.__code__  # under its `torch.no_grad()` wrapper
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return frame.f_locals.get(name) if frame is not None else None


def check_options(model: torch.nn.Module, input_ids: torch.Tensor, config: GenerationConfig,
                  model_kwargs: dict[str, Any], assistant_model: Any = None, synced_gpus: bool = False) -> None:
    """Raise `UnsupportedOption` for the first option of this call that Token Recycling cannot honour."""
    mode = config.get_generation_mode(assistant_model)
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        option = MODE_OPTIONS.get(mode, str(mode))
        if mode is GenerationMode.ASSISTED_GENERATION and assistant_model is None:
            option = next((name for name in ASSISTED_OPTIONS if getattr(config, name, None)), option)
        value = getattr(config, option, None) if option != "assistant_model" else type(assistant_model).__name__
        raise _refuse(f"{option}={value}", f"it is {mode.value.replace('_', ' ')}; Token Recycling decodes one "
                                            f"sequence, greedy or sampled (do_sample)")
    if config.guidance_scale is not None and config.guidance_scale != 1:
        # Its logits processor runs the model itself, one token after another over a cache of its own:
        # drafted tokens come to it out of that order.
        raise _refuse(f"guidance_scale={config.guidance_scale}", "its processor decodes alongside, token by token")
    if config.num_return_sequences and config.num_return_sequences > 1:
        raise _refuse(f"num_return_sequences={config.num_return_sequences}", "it decodes one sequence per call")
    if input_ids.shape[0] != 1:
        raise _refuse(f"a batch of {input_ids.shape[0]} prompts", "it decodes one prompt per call")
    if model.config.is_encoder_decoder:
        raise _refuse("an encoder-decoder model", "it decodes with decoder-only causal LMs")
    if synced_gpus:
        raise _refuse("synced_gpus=True", "it runs on one device")
    for option in UNSUPPORTED_OUTPUTS:
        if getattr(config, option, False):
            raise _refuse(f"{option}=True", "it returns the sequences only")
    for name, value in model_kwargs.items():
        if name not in PREPARED_INPUTS:
            raise _refuse(f"the model input {name}", "it feeds the model token ids only")
    if model_kwargs.get("attention_mask") is not None:  # `generate` drops a mask of ones
        raise _refuse("an attention_mask with padding", "it decodes one unpadded prompt")
    cache = model_kwargs.get("past_key_values")
    if cache is not None and cache.get_seq_length() > 0:
        raise _refuse("a filled past_key_values", "it keeps its own cache from the prompt on")


@dataclass
class ProcessorPicker:
    """Picks a token as transformers' greedy and sampling loops do (`tr.decoding.Picker`): the logits in
    float32, the prepared logits processors given the text before the token, then the argmax, or a draw from
    the softmax with torch's global generator (as `generate` draws)."""

    processors: LogitsProcessorList
    sample: bool

    def __call__(self, logits: torch.Tensor, before: list[int]) -> int:
        scores = logits.to(torch.float32, copy=True)[None]  # (1, vocab), as `generate` hands them over
        if self.processors:
            scores = self.processors(torch.tensor([before], device=logits.device), scores)
        if self.sample:
            return int(torch.multinomial(scores.softmax(-1), 1))
        return int(scores.argmax(-1))


@dataclass
class _Target(LoadedModel):
    """A bare transformers model as the library's decoders take it, with one call's EOS ids."""

    eos: tuple[int, ...] = ()

    @property
    def eos_ids(self) -> list[int]:
        return list(self.eos)


@dataclass
class _ModelState:
    """What one model keeps across calls: its tokenizer, matrices (one per tokenizer) and learned costs."""

    target: _Target
    costs: LearnedCost | None = None
    matrices: dict[str | None, AdjacencyMatrix] = field(default_factory=dict)


def _find_tokenizer(model: PreTrainedModel):
    """The tokenizer saved beside the model's weights (a local folder, or the hub cache), else None."""
    source = getattr(model, "name_or_path", "") or ""
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def _eos_ids(config: GenerationConfig) -> tuple[int, ...]:
    ids = config.eos_token_id
    return () if ids is None else (ids,) if isinstance(ids, int) else tuple(int(i) for i in ids)


class TokenRecycling:
    """Token Recycling for `model.generate(**inputs, custom_generate=TokenRecycling(...))`.

    `k` candidates per matrix row; `tree` and `start` as the library parses them (`tr.specs.parse_tree`,
    `parse_start`): `auto` sizes each step's tree by the device's measured pass cost, `primed` fills the
    matrix's empty rows from the primed matrix of the model's tokenizer (a hot start where there is none).
    The object keeps one matrix per model and tokenizer across calls. `tokenizer`: the model's, for the
    primed matrix (found beside the weights when not given). `kernels`: on the first call with a CPU model
    in float32 or bf16, install the project's batch-invariant kernels (`tr.device.kernels`) on it, which
    makes greedy output equal plain `generate`'s on that model; False leaves the model as it is. `costs`:
    the device's pass costs for trees sized by cost, measured on first use when not given (and cached on disk
    for a model with a name, `tr.device.calibrate`).
    """

    def __init__(self, k: int = 8, tree: str | TreeSpec = "auto", start: str | Start = "primed", *, tokenizer=None,
                 kernels: bool = True, costs: CostCurve | None = None):
        self.k = k
        self.costs = costs
        self.tree: TreeSpec = tree if isinstance(tree, TreeSpec) else parse_tree(tree, k)
        self.start: Start = parse_start(start)
        self.tokenizer = tokenizer
        self.kernels = kernels
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"TokenRecycling(k={self.k}, tree={self.tree.label!r}, start={self.start.value!r})"

    def __call__(self, model: PreTrainedModel, input_ids: torch.LongTensor, logits_processor=None,
                 stopping_criteria=None, generation_config: GenerationConfig | None = None,
                 synced_gpus: bool = False, streamer=None, *, tokenizer=None, **model_kwargs):
        """What `generate` calls once it has prepared the call: the prompt plus the new tokens (a tensor, or
        `GenerateDecoderOnlyOutput` with `sequences` under `return_dict_in_generate`)."""
        config = generation_config or model.generation_config
        streamer = streamer if streamer is not None else _from_generate("streamer")
        check_options(model, input_ids, config, model_kwargs, _from_generate("assistant_model"), synced_gpus)
        prompt = input_ids[0].tolist()
        state = self._state(model, tokenizer)
        # Greedy with no processor to apply is the library's own greedy decoding: a pass's argmaxes decide
        # the whole tree at once. Anything else reads each drafted node's text (`ProcessorPicker`).
        processors, sample = logits_processor or LogitsProcessorList(), bool(config.do_sample)
        picker = ProcessorPicker(processors, sample) if sample or processors else None
        steps = decode_steps(replace(state.target, eos=_eos_ids(config)), prompt, Method.TR,
                             config.max_length - len(prompt), matrix=self._matrix(state), tree=self.tree,
                             start=self._start(state), costs=state.costs, picker=picker)
        sequence = _emit(steps, input_ids, config.max_length, stopping_criteria or StoppingCriteriaList(), streamer)
        if config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=sequence)
        return sequence

    def generate(self, model: PreTrainedModel, **arguments) -> torch.LongTensor | GenerateDecoderOnlyOutput:
        """`model.generate(**arguments)` decoded by this object, with what `generate` hands a callable only in
        part: `streamer` and `tokenizer` reach it, and `stop_strings` become a stopping criterion."""
        if arguments.get("assistant_model") is not None:
            raise _refuse(f"assistant_model={type(arguments['assistant_model']).__name__}",
                          "Token Recycling drafts from its own matrix")
        tokenizer = arguments.pop("tokenizer", None) or self.tokenizer
        stops = arguments.pop("stop_strings", None)
        config = arguments.get("generation_config")
        if config is not None and config.stop_strings:
            config = arguments["generation_config"] = copy.deepcopy(config)
            stops, config.stop_strings = stops or config.stop_strings, None
        if stops:
            if tokenizer is None:
                raise ValueError("stop_strings need the model's tokenizer: pass tokenizer= to generate")
            criteria = StoppingCriteriaList(arguments.get("stopping_criteria") or [])
            criteria.append(StopStringCriteria(tokenizer, [stops] if isinstance(stops, str) else stops))
            arguments["stopping_criteria"] = criteria
        decode = functools.partial(self, tokenizer=tokenizer, streamer=arguments.get("streamer"))
        return GenerationMixin.generate(model, custom_generate=decode, **arguments)

    def matrix(self, model: PreTrainedModel) -> AdjacencyMatrix | None:
        """The matrix kept for `model` and its tokenizer (what a hot start reads); None before a call with it."""
        state = self._states.get(model)
        return self._matrix(state) if state is not None else None

    def fork(self) -> TokenRecycling:
        """A copy whose matrices and learned costs start as this object's and then go their own way (the
        models are shared, not copied): a call through it leaves this object's state as it was."""
        twin = TokenRecycling(self.k, self.tree, self.start, tokenizer=self.tokenizer, kernels=self.kernels,
                              costs=self.costs)
        for model, state in self._states.items():
            twin._states[model] = _ModelState(state.target, copy.deepcopy(state.costs), copy.deepcopy(state.matrices))
        return twin

    def _state(self, model: PreTrainedModel, tokenizer) -> _ModelState:
        state = self._states.get(model)
        if state is None:
            parameter = next(model.parameters())
            if self.kernels and not invariant.installed(model):
                kernels.install_kernels(model)
                if invariant.installed(model):
                    log.warning("tr.hf: installed Token Recycling's batch-invariant kernels on this %s, so that its "
                                "plain generate gives the same greedy tokens (TokenRecycling(kernels=False) leaves "
                                "a model as it is)", type(model).__name__)
            name = getattr(model, "name_or_path", "") or ""
            target = _Target(model, self.tokenizer or _find_tokenizer(model), name, parameter.device,
                             parameter.dtype, source=name, dtype_note=str(parameter.dtype))
            state = self._states[model] = _ModelState(target)
        if tokenizer is not None and tokenizer is not state.target.tokenizer:
            state.target = replace(state.target, tokenizer=tokenizer)
        if self.tree.sized_by_cost and state.costs is None:
            state.costs = LearnedCost(self.costs or device_curve(state.target))
        return state

    def _matrix(self, state: _ModelState) -> AdjacencyMatrix:
        tokenizer = state.target.tokenizer
        key = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
        if key not in state.matrices:
            state.matrices[key] = AdjacencyMatrix(state.target.vocab_size, self.k)
        return state.matrices[key]

    def _start(self, state: _ModelState) -> Start:
        """The start asked for; a primed start without a primed matrix for the model's tokenizer is a hot one."""
        if self.start is Start.PRIMED and (state.target.tokenizer is None or find_primed(state.target) is None):
            return Start.HOT
        return self.start


def _emit(steps: Iterator[Step], input_ids: torch.Tensor, max_length: int, criteria: StoppingCriteriaList,
          streamer) -> torch.LongTensor:
    """The prompt and the steps' tokens, one at a time as `generate` adds them: each is streamed, then the
    stopping criteria read the sequence so far (scores None: the loop keeps none); the first that says stop
    ends it there, and the remaining steps are never run."""
    sequence = torch.empty(1, max_length, dtype=torch.long, device=input_ids.device)
    length = input_ids.shape[1]
    sequence[0, :length] = input_ids[0]
    try:
        for step in steps:
            for token in step.tokens:
                sequence[0, length] = token
                length += 1
                if streamer is not None:
                    streamer.put(torch.tensor([token]))
                if bool(criteria(sequence[:, :length], None).any()) or length == max_length:
                    return sequence[:, :length]
        return sequence[:, :length]
    finally:
        getattr(steps, "close", lambda: None)()  # frees the request's cache now, not when collected
        if streamer is not None:
            streamer.end()


_shared: dict[tuple[int, str, str], TokenRecycling] = {}


def generate(model: PreTrainedModel, k: int = 8, tree: str = "auto", start: str = "primed", **arguments):
    """The hub folder's entry (`custom_generate/generate.py`): `model.generate`'s arguments as transformers
    passes them on, decoded by one `TokenRecycling` per (k, tree, start) in this process, so its matrices
    persist across calls. `k`, `tree` and `start` may be given to `model.generate` too."""
    recycler = _shared.get((k, tree, start))
    if recycler is None:
        recycler = _shared[(k, tree, start)] = TokenRecycling(k, tree, start)
    return recycler.generate(model, **arguments)
