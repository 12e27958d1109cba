"""Attention-head importance from a gate on each head (Michel et al. 2019).

A gate ξ_h multiplies head h's output where it enters the output projection; ∂L/∂ξ_h at ξ = 1
is the first-order loss change of removing the head. Its absolute value is averaged over
batches and normalised per layer (L2), as in "Are Sixteen Heads Really Better than One?", so
heads of different layers can be ranked together. It scores heads only: for the feed-forward
neurons of the same blocks use a channel or weight criterion.
"""

from __future__ import annotations

import torch

from sensiprune import distributed
from sensiprune.criteria.base import Criterion, ScoringContext, register
from sensiprune.data import checked_loss
from sensiprune.errors import SensipruneError
from sensiprune.modes import eval_mode
from sensiprune.structure import adapters


class HeadGate(Criterion):
    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        blocks = adapters.find_blocks(ctx.model)
        if not blocks:
            raise SensipruneError(
                "criterion 'head_gate' scores the heads of transformer blocks sensiprune "
                f"knows ({', '.join(a.family for a in adapters.ADAPTERS)}); this model has none"
            )
        gates, handles = {}, []
        for block in blocks:
            output = block.module.get_submodule(block.adapter.output)
            query_heads, _, size = adapters.head_counts(block)
            gate = torch.ones(query_heads, dtype=output.weight.dtype,
                              device=output.weight.device, requires_grad=True)  # fmt: skip
            gates[block.path(block.adapter.output)] = (gate, size)
            handles.append(output.register_forward_pre_hook(_gating(gate, size)))
        totals = [torch.zeros(len(g), dtype=torch.float64) for g, _ in gates.values()]
        count = 0
        try:
            with eval_mode(ctx.model):
                for batch in ctx.batches or []:
                    loss = checked_loss(ctx.loss_fn, ctx.model, batch)
                    grads = torch.autograd.grad(loss, [g for g, _ in gates.values()],
                                                allow_unused=True)  # fmt: skip
                    for total, grad in zip(totals, grads):
                        if grad is not None:
                            total += grad.detach().abs().double().cpu()
                    count += 1
        finally:
            for handle in handles:
                handle.remove()
        count = distributed.sum_count(count)
        distributed.sum_(totals)
        if count == 0:
            raise SensipruneError("data yielded no batches: pass a non-empty iterable of batches")
        scores = {}
        for (layer, (_, size)), total in zip(gates.items(), totals):
            importance = total / count
            importance = importance / importance.norm().clamp_min(1e-30)  # per layer (Michel)
            scores[f"{layer}::in"] = importance.repeat_interleave(size)
        return scores


def _gating(gate: torch.Tensor, size: int):
    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0] * gate.repeat_interleave(size).to(args[0].dtype), *args[1:])

    return hook


register(
    HeadGate(
        "head_gate",
        "|∂L/∂ξ| of a gate on each attention head, per-layer normalised (Michel et al. 2019); "
        "structured, transformer heads",
        structured_only=True,
    )
)
