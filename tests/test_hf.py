"""Token Recycling inside transformers' `model.generate` (`tr.hf`): as a callable and as the repository's
`custom_generate/` folder, on tiny random float64 Llama, Qwen2 and GPT-2. Greedy output equals plain
`generate`'s token for token, EOS, stop strings and the streamer behave as in plain `generate`, sampling
keeps the distribution, and what it cannot honour fails with one line naming the option."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList
from transformers.generation import BaseStreamer, StoppingCriteriaList, StopStringCriteria, TextStreamer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from test_sampling import ALPHA, LENGTH, PROMPT, RUNS, VOCAB as SAMPLING_VOCAB, chi_square_p_value
from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.hf import TokenRecycling, UnsupportedOption

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]  # the folder form loads custom_generate/ from a clone's root
VOCAB = 96


def prompts(seed: int, count: int = 3) -> list[torch.Tensor]:
    rng = random.Random(seed)
    return [torch.tensor([[rng.randrange(1, VOCAB) for _ in range(rng.randint(2, 12))]], device=DEVICE)
            for _ in range(count)]


def plain(model, ids, **options) -> torch.Tensor:
    return model.generate(ids, do_sample=False, **options)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_equals_plain_generate_through_the_callable(arch):
    model = tiny_model(arch, VOCAB, seed=1)
    recycler = TokenRecycling(k=8, tree="paper-80")  # a wide tree: many drafts to accept or reject
    rows = []
    for ids in prompts(seed=1, count=4):  # later prompts meet the matrix the earlier ones left (hot start)
        expected = plain(model, ids, max_new_tokens=48)
        assert torch.equal(model.generate(ids, do_sample=False, max_new_tokens=48, custom_generate=recycler), expected)
        rows.append(recycler.matrix(model).rows_filled)
    matrix = recycler.matrix(model)
    assert rows == sorted(rows) and rows[0] > 0  # one matrix, kept and growing across calls
    assert sum(sum(row) for row in matrix.stats.correct) > 10, "no draft was ever accepted"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_equals_plain_generate_through_the_folder(arch):
    model = tiny_model(arch, VOCAB, seed=2)
    for ids in prompts(seed=2):
        expected = plain(model, ids, max_new_tokens=40)
        out = model.generate(ids, do_sample=False, max_new_tokens=40, custom_generate=str(ROOT),
                             trust_remote_code=True, tree="small-16")
        assert torch.equal(out, expected)


def test_the_folder_needs_trust_remote_code():
    model, ids = tiny_model("llama", VOCAB), prompts(seed=3, count=1)[0]
    with pytest.raises(ValueError, match="(?s)contains custom generation code.*trust_remote_code=True"):
        model.generate(ids, max_new_tokens=4, custom_generate=str(ROOT))


def test_the_default_auto_tree_and_processors_that_read_the_text():
    """`auto` (sized by the calibrated cost) and greedy under processors that read the text so far, which
    Token Recycling applies at every drafted node to that node's own text."""
    model = tiny_model("qwen2", VOCAB, seed=4)
    recycler = TokenRecycling()
    for ids in prompts(seed=4):
        for options in ({}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}, {"min_new_tokens": 30}):
            expected = plain(model, ids, max_new_tokens=36, **options)
            out = model.generate(ids, do_sample=False, max_new_tokens=36, custom_generate=recycler, **options)
            assert torch.equal(out, expected), options


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eos_ends_the_output_where_plain_generate_ends_it(arch):
    model = tiny_model(arch, VOCAB, seed=5)
    recycler = TokenRecycling(tree="paper-80")
    ids = prompts(seed=5, count=1)[0]
    never = VOCAB + 1  # no token of the model: plain generate runs the whole length
    full = plain(model, ids, max_new_tokens=50, eos_token_id=never)[0, ids.shape[1]:].tolist()
    assert len(full) == 50
    model.generate(ids, max_new_tokens=50, eos_token_id=never, custom_generate=recycler)  # hot: long runs accepted
    for position in (3, 17, 33):
        eos = [full[position], VOCAB - 1] if full[position] != VOCAB - 1 else [full[position]]  # several ids
        if full[position] in full[:position]:
            continue  # an earlier occurrence would end it first
        expected = plain(model, ids, max_new_tokens=50, eos_token_id=eos, pad_token_id=eos[0])
        out = model.generate(ids, max_new_tokens=50, eos_token_id=eos, pad_token_id=eos[0], custom_generate=recycler)
        assert torch.equal(out, expected)
        assert out.shape[1] == ids.shape[1] + position + 1


def test_return_dict_in_generate_gives_the_sequences():
    model, ids = tiny_model("llama", VOCAB, seed=6), prompts(seed=6, count=1)[0]
    expected = model.generate(ids, max_new_tokens=20, return_dict_in_generate=True)
    out = model.generate(ids, max_new_tokens=20, return_dict_in_generate=True, custom_generate=TokenRecycling())
    assert torch.equal(out.sequences, expected.sequences)


@pytest.fixture(scope="module")
def text_model(tiny_model_dir):
    """A tiny random float32 Llama with the bundled tokenizer: text to stream and stop strings to find.
    Float32 on the CPU, so Token Recycling's first call installs the project's kernels on it; plain
    `generate` runs on them too after that (the fixture makes that call)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    model.generate(ids, max_new_tokens=2, custom_generate=TokenRecycling())
    return model, tokenizer, ids


class Recorder(BaseStreamer):
    """Every `put` as a list of ids, and whether `end` came."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


class Collecting(TextStreamer):
    """The streamed text, as a console would have shown it."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True)
        self.text = ""

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.text += text


@pytest.mark.parametrize("form", ["callable", "folder"])
def test_the_streamer_gets_what_plain_generate_streams(text_model, form):
    model, tokenizer, ids = text_model
    target = TokenRecycling(tree="paper-80") if form == "callable" else str(ROOT)
    extra = {} if form == "callable" else {"trust_remote_code": True}
    recorded = {}
    for name, custom in (("plain", None), ("tr", target)):
        recorder, text = Recorder(), Collecting(tokenizer)
        for streamer in (recorder, text):
            out = model.generate(ids, max_new_tokens=40, do_sample=False, streamer=streamer, custom_generate=custom,
                                 **(extra if custom else {}))
        recorded[name] = (out, recorder.puts, recorder.ended, text.text)
    assert torch.equal(recorded["tr"][0], recorded["plain"][0])
    assert recorded["tr"][1:] == recorded["plain"][1:]  # the prompt, then one put per token, then end
    assert recorded["tr"][3] == tokenizer.decode(recorded["tr"][0][0, ids.shape[1]:])


def stop_string(model, tokenizer, ids) -> str:
    """A few characters from the middle of plain greedy's text, where nothing before shows them."""
    text = tokenizer.decode(plain(model, ids, max_new_tokens=40)[0, ids.shape[1]:])
    for start in range(len(text) // 3, len(text) - 4):
        stop = text[start:start + 3]
        if stop.strip() and text.find(stop) == start:
            return stop
    pytest.fail(f"no stop string found in {text!r}")


def test_stop_strings_stop_where_plain_generate_stops(text_model):
    model, tokenizer, ids = text_model
    stop = stop_string(model, tokenizer, ids)
    expected = plain(model, ids, max_new_tokens=40, stop_strings=[stop], tokenizer=tokenizer)
    assert expected.shape[1] < ids.shape[1] + 40 and stop in tokenizer.decode(expected[0, ids.shape[1]:])
    folder = model.generate(ids, do_sample=False, max_new_tokens=40, stop_strings=[stop], tokenizer=tokenizer,
                            custom_generate=str(ROOT), trust_remote_code=True)
    assert torch.equal(folder, expected)
    # transformers gives a callable no tokenizer, so it refuses stop_strings there; the criterion works.
    criteria = StoppingCriteriaList([StopStringCriteria(tokenizer, [stop])])
    recycler = TokenRecycling()
    out = model.generate(ids, do_sample=False, max_new_tokens=40, stopping_criteria=criteria, custom_generate=recycler)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="could not locate a tokenizer"):
        model.generate(ids, max_new_tokens=40, stop_strings=[stop], tokenizer=tokenizer, custom_generate=recycler)


@pytest.mark.parametrize("options, named", [
    ({"num_beams": 2}, "num_beams=2"),
    ({"num_beams": 2, "do_sample": True}, "num_beams=2"),
    ({"penalty_alpha": 0.6, "top_k": 4}, "penalty_alpha=0.6"),
    ({"prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens=3"),
    ({"num_return_sequences": 2, "do_sample": True}, "num_return_sequences=2"),
    ({"output_scores": True, "return_dict_in_generate": True}, "output_scores=True"),
    ({"max_new_tokens": 2000}, "max_new_tokens"),
    ({"guidance_scale": 1.5}, "guidance_scale=1.5"),
])
def test_what_it_cannot_honour_fails_with_one_line_naming_it(options, named):
    model, ids = tiny_model("llama", VOCAB), prompts(seed=7, count=1)[0]
    options = {"max_new_tokens": 8, **options}
    with pytest.raises(ValueError, match=named) as caught:
        model.generate(ids, custom_generate=TokenRecycling(), **options)
    assert "\n" not in str(caught.value)


def test_a_batch_of_two_and_an_assistant_model_are_refused():
    model = tiny_model("llama", VOCAB)
    batch = torch.tensor([[1, 2, 3], [4, 5, 6]], device=DEVICE)
    with pytest.raises(UnsupportedOption, match="a batch of 2 prompts"):
        model.generate(batch, max_new_tokens=8, custom_generate=TokenRecycling())
    helper, ids = tiny_model("llama", VOCAB, seed=1), prompts(seed=8, count=1)[0]
    for custom, extra in ((TokenRecycling(), {}), (str(ROOT), {"trust_remote_code": True})):
        with pytest.raises(UnsupportedOption, match="assistant_model=LlamaForCausalLM"):
            model.generate(ids, max_new_tokens=8, assistant_model=helper, custom_generate=custom, **extra)


@pytest.fixture(scope="module")
def sharp_model():
    """test_sampling's model: 4 tokens, sharpened logits, so a wrong sampler shows."""
    model = tiny_model("llama", SAMPLING_VOCAB, seed=5)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0)
    # No EOS and no padding: every token of the four may follow, PROMPT's 0 included.
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    return model


def exact_distribution(model, processors: LogitsProcessorList) -> dict[tuple[int, ...], float]:
    """The chance of every continuation of LENGTH tokens under transformers' own sampling: its warpers on
    the float32 logits, then the softmax."""
    probs = {(): 1.0}
    with torch.no_grad():
        for _ in range(LENGTH):
            following = {}
            for prefix, p in probs.items():
                ids = torch.tensor([PROMPT + list(prefix)], device=DEVICE)
                scores = processors(ids, model(ids).logits[:, -1].float())
                for token, q in enumerate(scores.softmax(-1)[0].tolist()):
                    if q > 0:
                        following[prefix + (token,)] = p * q
            probs = following
    return probs


@pytest.mark.parametrize("settings, wrong_temperature", [  # a wrong one that keeps every sequence possible
    ({"temperature": 0.7, "top_p": 0.9, "top_k": 0}, 1.05),
    ({"temperature": 1.3, "top_k": 3}, 0.65),
])
def test_sampling_keeps_the_distribution_of_plain_generate(sharp_model, settings, wrong_temperature):
    def warpers(temperature: float) -> LogitsProcessorList:
        chosen = [TemperatureLogitsWarper(temperature)]
        chosen += [TopKLogitsWarper(settings["top_k"])] if settings.get("top_k") else []
        return LogitsProcessorList(chosen + ([TopPLogitsWarper(settings["top_p"])] if "top_p" in settings else []))

    expected = exact_distribution(sharp_model, warpers(settings["temperature"]))
    config = GenerationConfig(do_sample=True, max_new_tokens=LENGTH, **settings)
    recycler, ids, counts = TokenRecycling(k=4, tree="small-16"), torch.tensor([PROMPT], device=DEVICE), Counter()
    torch.manual_seed(0)
    for _ in range(RUNS):
        out = sharp_model.generate(ids, generation_config=config, custom_generate=recycler)
        counts[tuple(out[0, len(PROMPT):].tolist())] += 1
    assert chi_square_p_value(counts, expected, RUNS) > ALPHA
    wrong = exact_distribution(sharp_model, warpers(wrong_temperature))
    assert chi_square_p_value(counts, wrong, RUNS) < ALPHA  # the same counts do tell a wrong sampler apart
    assert sum(sum(row) for row in recycler.matrix(sharp_model).stats.correct) > RUNS // 2  # drafts were taken
