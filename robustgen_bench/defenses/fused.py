"""Inference-only copies of generator networks, cheaper per call on CPU, equal up to rounding.

ABS-family inference decodes K classes × N samples at every one of its Adam steps, so the
decoders' forward and backward passes are nearly all of its cost. Two changes that keep the
function and cut that cost (measured in ``benchmarks/attack_step_cost.py --predict``):

* **BatchNorm folded into the preceding (transposed) convolution** with
  :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`: in eval mode a BatchNorm is a per-channel
  affine map, so it can live in the convolution's weights and bias. On the 25×25 layers of the
  Table 2.1 decoder the BatchNorm's own forward and backward cost about as much as the
  convolution.
* **ELU from the vectorised exp**: this torch build evaluates ``F.elu`` through a scalar
  ``expm1`` (about 10× slower than ``exp`` on the same tensor), half of the authors' ABS
  inference time. ``x ≤ 0 ↦ exp(x) - 1`` differs from ``expm1`` by at most a few 1e-8.

The copies are built from the current weights by :func:`fuse_for_inference` (a ``torch.fx``
rewrite of the module's traced graph; modules it cannot trace are returned as plain deep
copies), have no trainable parameters and are only valid while the source weights are unchanged:
:class:`~robustgen_bench.defenses.abs.ABSDefense` rebuilds them when any parameter's version
counter moves (optimiser steps and ``load_state_dict`` both bump it).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _ExpELU(torch.autograd.Function):
    """ELU (alpha 1): forward through ``exp``, backward through ``aten.elu_backward`` on the output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clamp_max(0).exp_().sub_(1).add_(x.clamp_min(0))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, True, out)


def exp_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU with alpha 1 on any tensor: ``x`` where positive, ``exp(x) - 1`` elsewhere."""
    return _ExpELU.apply(x)


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with BatchNorm folded and ELU via exp; no trainable weights.

    Only BatchNorm2d layers that directly follow a Conv2d / ConvTranspose2d used nowhere else are
    folded, and only ``F.elu`` calls with the default alpha are replaced; everything else is kept.
    """
    source = copy.deepcopy(module).eval()
    try:
        gm = fx.symbolic_trace(source)
    except Exception:  # noqa: BLE001 - untraceable forward: keep the exact module
        fused: nn.Module = source
    else:
        mods = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and isinstance(mods.get(node.target), nn.BatchNorm2d):
                prev = node.args[0]
                if (isinstance(prev, fx.Node) and prev.op == "call_module"
                        and isinstance(mods.get(prev.target), _CONVS) and len(prev.users) == 1
                        and mods[node.target].track_running_stats):
                    conv = mods[prev.target]
                    _set_submodule(gm, prev.target, fuse_conv_bn_eval(
                        conv, mods[node.target], transpose=isinstance(conv, nn.ConvTranspose2d)))
                    node.replace_all_uses_with(prev)
                    gm.graph.erase_node(node)
            elif (node.op == "call_function" and node.target is F.elu and len(node.args) == 1
                  and node.kwargs.get("alpha", 1.0) == 1.0 and not node.kwargs.get("inplace")):
                node.kwargs = {}
                node.target = exp_elu
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        fused = gm
    fused = fused.eval().to(memory_format=torch.channels_last)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
