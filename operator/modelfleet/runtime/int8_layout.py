"""A layout rewrite of converted int8 models: a classifier reads its conv features in the order they lie in memory.

torch's int8 convolutions and poolings (fbgemm, oneDNN, qnnpack) give channels-last tensors: memory order N, H, W, C.
`torch.flatten(x, 1)` before a Linear wants C, H, W order, so it copied the whole activation (~0.1 ms of cnn-wide's
~2 ms int8 pass at 64 rows: quantized copies are slow). Rewritten, the flatten reads H, W, C (`x.permute(0, 2, 3, 1)`,
a view of channels-last memory) and the Linear's int8 weight columns are put in that order once, at load. Integer
sums do not depend on their order, so the answers are bit for bit the same (tested); for a tensor that is not
channels-last, the permuted flatten copies as the plain one did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.ao.nn.quantized import Linear as QuantizedLinear
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp


def _flatten_into_linear(node: Node, model: GraphModule) -> tuple[Node, QuantizedLinear] | None:
    """(the flattened 4-d tensor, the int8 Linear that alone reads it) where `node` is `torch.flatten(x, 1)`."""
    if node.op != "call_function" or node.target is not torch.flatten or node.args[1:] != (1,) or node.kwargs:
        return None
    source, users = node.args[0], list(node.users)
    if not isinstance(source, Node) or len(source.meta["tensor_meta"].shape) != 4 or len(users) != 1:
        return None
    linear = users[0]
    if linear.op != "call_module" or linear.args != (node,):
        return None
    module = model.get_submodule(str(linear.target))
    shared = sum(n.op == "call_module" and n.target == linear.target for n in model.graph.nodes) > 1
    return None if shared or not isinstance(module, QuantizedLinear) else (source, module)


def _columns_channels_last(linear: QuantizedLinear, channels: int, height: int, width: int) -> None:
    weight, bias = linear.weight(), linear.bias()
    columns = weight.int_repr().reshape(-1, channels, height, width).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales, zero_points, axis = weight.q_per_channel_scales(), weight.q_per_channel_zero_points(), 0
        reordered = torch._make_per_channel_quantized_tensor(columns.contiguous(), scales, zero_points, axis)
    else:
        reordered = torch._make_per_tensor_quantized_tensor(
            columns.contiguous(), weight.q_scale(), weight.q_zero_point()
        )
    linear.set_weight_bias(reordered, bias)


def flatten_channels_last(model: GraphModule, sample: Sequence[torch.Tensor]) -> int:
    """Rewrites every `torch.flatten(x, 1)` of a 4-d int8 tensor read only by an int8 Linear (see above), in place;
    `sample`: inputs of one row (the shapes). Returns how many it rewrote."""
    ShapeProp(model).propagate(*sample)
    rewritten = 0
    for node in list(model.graph.nodes):
        found = _flatten_into_linear(node, model)
        if found is None:
            continue
        source, linear = found
        _columns_channels_last(linear, *source.meta["tensor_meta"].shape[1:])
        with model.graph.inserting_before(node):
            node.args = (model.graph.call_method("permute", (source, 0, 2, 3, 1)), 1)
        rewritten += 1
    model.recompile()
    return rewritten
