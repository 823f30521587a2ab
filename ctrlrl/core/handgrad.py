"""A plain MLP's forward and backward passes written out, for losses whose gradient with respect to
the network's output has a short closed form (PPO's clipped surrogate and value loss).

On CPU, a 64-sample minibatch through 64-64 networks costs more in autograd's per-node work
(recording the graph, saving tensors, scheduling some 35 backward nodes) than in arithmetic. The
same gradients as three matrix products per layer, written straight into the parameters' `.grad`
(views into `FlatParams`' buffer), take about half the time. Equal to autograd's up to float
rounding (tests/test_fast_path.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctrlrl.core.nets import MLP

# d activation / d pre-activation, applied to an upstream gradient, from the activation's output
_ACTIVATION_BACKWARD = {
    torch.tanh: torch.ops.aten.tanh_backward,  # g · (1 − h²)
    F.relu: lambda g, h: torch.ops.aten.threshold_backward(g, h, 0),  # g where h > 0
}


def covers(mlp: torch.nn.Module) -> bool:
    """Whether `forward` / `backward_into_grads` compute this network: an `MLP` with an output
    layer, no LayerNorm, a tanh or ReLU activation, float32 throughout."""
    return (type(mlp) is MLP and mlp.norms is None and mlp.act in _ACTIVATION_BACKWARD
            and mlp.n_hidden < len(mlp.layers) and mlp.compute_dtype == torch.float32)


def forward(mlp: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """The input, every hidden layer's activation and the output (the last entry): what the
    backward pass needs. The same operations as `MLP.forward` in float32; call without grad."""
    outputs = [x]
    for i, layer in enumerate(mlp.layers):
        x = F.linear(x, layer.weight, layer.bias)
        if i < mlp.n_hidden:
            x = mlp.act(x)
        outputs.append(x)
    return outputs


def backward_into_grads(mlp: MLP, outputs: list[torch.Tensor], grad_out: torch.Tensor) -> None:
    """Write ∂loss/∂θ into every weight's and bias's `.grad`, replacing what was there, given
    `outputs` from `forward` and ∂loss/∂output."""
    grad = grad_out
    backward = _ACTIVATION_BACKWARD[mlp.act]
    for i in range(len(mlp.layers) - 1, -1, -1):
        layer = mlp.layers[i]
        torch.mm(grad.t(), outputs[i], out=layer.weight.grad)
        torch.sum(grad, 0, out=layer.bias.grad)
        if i > 0:  # through the layer, then through the activation that produced its input
            grad = backward(grad.mm(layer.weight), outputs[i])
