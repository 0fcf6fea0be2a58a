"""Human-readable descriptions of a network: the layer table that ``print(net)`` and ``net.summary()`` show."""
from __future__ import annotations


def summary(model) -> str:
    """A table of layers with shapes and parameter counts."""
    lines = [f"MLP on {model.device} ({model.dtype}), {model.n_params:,} parameters",
             f"{'layer':<8}{'shape':<16}{'activation':<12}{'params':>12}"]
    n_layers = len(model.W)
    for i in range(n_layers):
        n_in, n_out = model.layer_sizes[i], model.layer_sizes[i + 1]
        act = model.output_activation if i == n_layers - 1 else model.hidden_activation
        lines.append(f"{'dense_' + str(i + 1):<8}{f'{n_in} -> {n_out}':<16}{act:<12}{n_in * n_out + n_out:>12,}")
    extras = [f"{k}={v}" for k, v in (("l1", model.l1), ("l2", model.l2), ("dropout", model.dropout)) if v]
    if extras:
        lines.append("regularization: " + ", ".join(extras))
    return "\n".join(lines)
