"""What a CUDA graph captures can be captured: checked on a CPU, on the meta device.

A captured region may not read a device value on the host (`.item()`, a zero-dimensional index, `nonzero`,
`if tensor`) nor copy a host tensor in: either makes capture fail, and the decoder then runs eagerly,
correct but without the graph's speed. On the meta device tensors have shapes and no values, so every such
read raises; a dispatch mode sees every operation and names any that touches a tensor off the device.
The same view of every operation checks what fixed shapes promise: a tree pass and a one-token pass make
the same calls on operands of the same shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tiny_models import ARCHITECTURES, tiny_model
from tr.device.graphs import Workspace
from tr.device.resident import ROOT_ONLY, device_step
from tr.matrix import AdjacencyMatrix
from tr.passes import forward
from tr.trees import DraftTree, best_first_paths, best_first_template

VOCAB, CAPACITY = 96, 512
META = torch.device("meta")


class HostTensors(TorchDispatchMode):
    """Records every operation given a tensor that is not on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands, _ = tree_flatten((args, kwargs))
        if any(isinstance(t, torch.Tensor) and t.device != META for t in operands):
            self.seen.append(str(func))
        return func(*args, **kwargs)


class ModelCalls(TorchDispatchMode):
    """Records every operation inside `model`'s forward, with the shapes of its tensor operands."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.seen: list[tuple] = []
        self.inside = False
        self.hooks = [model.register_forward_pre_hook(lambda *_: setattr(self, "inside", True)),
                      model.register_forward_hook(lambda *_: setattr(self, "inside", False))]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.inside:
            operands, _ = tree_flatten((args, kwargs))
            self.seen.append((str(func), *(tuple(t.shape) for t in operands if isinstance(t, torch.Tensor))))
        return func(*args, **kwargs)

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)


def meta_workspace(arch: str) -> Workspace:
    return Workspace(tiny_model(arch, VOCAB, dtype=torch.float32).to(META), CAPACITY)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("template, size", [(None, None), ("tiny-4", None), ("paper-80", None), ("chosen", 96)])
@pytest.mark.parametrize("fixed", [False, True])
def test_a_whole_step_on_the_device_never_reads_a_value_on_the_host(arch, template, size, fixed):
    workspace = meta_workspace(arch)
    paths = best_first_paths(256, 10) if template == "chosen" else best_first_template(template, 8) if template else []
    tree = DraftTree.from_paths(paths)
    matrix = AdjacencyMatrix(VOCAB, 8) if template else None
    step = device_step(workspace, tree, matrix, fixed, size)
    step.begin(length=10, root=5, room=100, eos=[0, 1])
    with torch.inference_mode(), HostTensors() as host:
        ints, floats = step._step()
    assert host.seen == []
    assert ints.device == floats.device == META


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("greedy", [False, True])
def test_a_graphed_pass_never_reads_a_value_on_the_host(arch, greedy):
    workspace = meta_workspace(arch)
    inputs = workspace._inputs(16)
    workspace.cache.slots = inputs.slots
    with torch.inference_mode(), HostTensors() as host:
        logits = forward(workspace.model, workspace.cache, inputs.ids, inputs.positions, inputs.mask, greedy=greedy)
    assert host.seen == []
    assert logits.shape == (16, VOCAB)


def test_the_check_fails_on_a_host_read():
    """The two ways capture breaks are caught: a value read on the host, a host tensor copied in."""
    values = torch.zeros(8, device=META)
    with pytest.raises(RuntimeError, match="meta"):
        values[values.argmax()]  # a zero-dimensional index is read with `.item()`
    with HostTensors() as host:
        values.add_(torch.ones(8))
    assert host.seen == ["aten.add_.Tensor"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_in_fixed_shapes_a_tree_pass_and_a_one_token_pass_make_the_same_calls(arch):
    """What batch invariance by fixed shapes rests on: the same operations on operands of the same shapes."""
    workspace = meta_workspace(arch)
    calls = []
    for tree in (ROOT_ONLY, DraftTree.from_paths(best_first_template("paper-80", 8))):
        step = device_step(workspace, tree, None, fixed=True)
        step.begin(length=10, root=5, room=100, eos=[])
        tokens = torch.zeros(tree.size, dtype=torch.long, device=META)
        with torch.inference_mode(), ModelCalls(workspace.model) as recorded:
            step.verify(tokens, step.length)
        calls.append(recorded.seen)
    assert len(calls[0]) > 50 and calls[0] == calls[1]
