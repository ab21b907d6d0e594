"""Combining the loss terms: fixed weights (:func:`weighted_sum`, the default) or learned ones
(:class:`UncertaintyWeighting`, Kendall et al. 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def weighted_sum(
    losses: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    *,
    start: torch.Tensor | float = 0,
) -> torch.Tensor:
    """Fixed weighting (the default): ``L = start + sum_i lambda_i * L_i`` over the terms
    present in ``losses``, added left to right in their order (``start`` lets a caller add
    terms to a total it already has without changing the order of the additions); a term
    without a weight is an error, a weight without a term is skipped."""
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise ValueError(f"no weight for loss terms {missing}; weights has {sorted(weights)}")
    if not losses:
        raise ValueError("losses is empty")
    return sum((weights[k] * v for k, v in losses.items()), start)


class UncertaintyWeighting(nn.Module):
    """Learned loss weights from homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable log-variance ``s_i`` per term, and

        L = sum_i exp(-s_i) * L_i + s_i

    For fixed ``L_i`` the minimum over ``s_i`` is at ``exp(-s_i) L_i = 1``, i.e. ``s_i* = log
    L_i``: each term ends up weighted by ``1 / L_i``, so every term contributes on the same
    (unit) scale whatever its units. Kendall's Gaussian form is ``0.5 exp(-s) L + 0.5 s``,
    exactly half of ours: the same stationary points, with gradients halved (a learning-rate
    factor). We drop the 0.5s so that at the initial ``s = 0`` the total equals the unweighted
    sum, i.e. the fixed weights of 1 it replaces. Leave ``log_vars`` out of weight decay.

    A term that can approach 0 drives ``s_i`` to ``-inf`` and its weight up without bound;
    ``min_log_var`` clamps ``s_i`` from below (its gradient is then 0 there).
    """

    def __init__(
        self, names: Sequence[str], *, init_log_var: float = 0.0, min_log_var: float | None = None
    ) -> None:
        super().__init__()
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"names must be non-empty and distinct, got {names}")
        self.names, self.init_log_var, self.min_log_var = names, init_log_var, min_log_var
        self.log_vars = nn.Parameter(torch.full((len(names),), float(init_log_var)))

    @torch.no_grad()
    def init_weights(self) -> None:
        self.log_vars.fill_(self.init_log_var)

    def forward(
        self, losses: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Combines the terms present in ``losses`` (a subset of ``names``; an absent term, e.g.
        ``aux`` in a batch without labels, leaves its ``s_i`` untouched).

        Returns:
            ``(total, weights)`` with the detached weights ``exp(-s_i)`` of the present terms.
        """
        unknown = sorted(set(losses) - set(self.names))
        if unknown or not losses:
            raise ValueError(
                f"losses must be a non-empty subset of {self.names}, got {sorted(losses)}"
            )
        s_K = self.log_vars
        if self.min_log_var is not None:
            s_K = s_K.clamp(min=self.min_log_var)
        total, weights = 0.0, {}
        for i, name in enumerate(self.names):
            if name in losses:
                total = total + torch.exp(-s_K[i]) * losses[name] + s_K[i]
                weights[name] = torch.exp(-s_K[i]).detach()
        return total, weights
