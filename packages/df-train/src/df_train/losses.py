"""DualForce's per-term training losses (DESIGN.md, "Training").

    L = L_video + lambda_s * L_struct + lambda_aux(step) * L_aux + lambda_lip * L_lip

- :func:`velocity_losses`: flow-matching velocity MSE, per token averaged per frame (optionally
  under per-pixel weights), then a weighted mean over the frames that count (``L_video`` and
  ``L_struct``).
- :func:`mouth_box_to_latent`, :func:`mouth_weight_map` and :func:`weighted_frame_mse`: the
  video loss re-weighted towards the mouth box (``LossConfig.mouth_weight``).
- :func:`aux_struct_loss` and :func:`aux_weight`: the struct stream's clean estimate aligned with
  auxiliary 3-D labels where a clip has them, under a weight that decays to 0.

``L_lip`` is :mod:`df_train.lipsync`; the terms are combined by :mod:`df_train.weighting`, and
:mod:`df_train.objective` puts it all together.

Legend: B batch, T latent frames, C latent channels, H W latent size, Ds structure dim.
"""

from __future__ import annotations

import math

import torch

from df_core import frame_mse, reduce_frame_loss

AUX_SCHEDULES = ("cosine", "linear")


def velocity_losses(
    v_pred: torch.Tensor,
    v_target: torch.Tensor,
    valid_BT: torch.Tensor | None = None,
    weight_BT: torch.Tensor | None = None,
    pixel_weight_BTHW: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flow-matching velocity loss of one stream.

    ``L = sum_{b,t} w_bt * m_bt * mean_tokens (v_hat - v)^2 / sum_{b,t} w_bt * m_bt``

    (with ``pixel_weight_BTHW`` the per-frame mean is :func:`weighted_frame_mse`'s weighted one)

    Args:
        v_pred: ``[B, T, ...]`` predicted velocity (video ``[B, T, C, H, W]`` or structure
            ``[B, T, Ds]``).
        v_target: same shape, ``v = eps - x0``.
        valid_BT: optional bool ``[B, T]``, the frames ``m`` that count. The caller excludes
            clean-context frames (``sigma == 0``: their target is the input, nothing to learn)
            and padding.
        weight_BT: optional non-negative ``[B, T]`` per-frame weights ``w`` (e.g. by sigma).
        pixel_weight_BTHW: optional positive per-pixel weights of a video stream
            (:func:`mouth_weight_map`).

    Returns:
        A float32 scalar; 0 (not NaN) when no frame counts.
    """
    if pixel_weight_BTHW is None:
        per_frame_BT = frame_mse(v_pred, v_target)
    else:
        per_frame_BT = weighted_frame_mse(v_pred, v_target, pixel_weight_BTHW)
    return reduce_frame_loss(per_frame_BT, weight_BT=weight_BT, valid_BT=valid_BT)


def aux_struct_loss(
    s0_hat_BTDs: torch.Tensor, aux_BTDs: torch.Tensor, aux_mask_BT: torch.Tensor
) -> torch.Tensor:
    """Aligns the struct stream's clean estimate with auxiliary 3-D labels.

    ``s0_hat = s_sigma - sigma_s * v_hat_s`` (:func:`df_core.x0_from_velocity`), and

    ``L_aux = sum_{b,t} m_bt * mean_d (s0_hat - aux)^2 / sum_{b,t} m_bt``

    Args:
        s0_hat_BTDs: ``[B, T, Ds]`` the predicted clean structure.
        aux_BTDs: ``[B, T, Ds]`` the labels in the same parameterisation (labels in another
            space, e.g. FLAME, need a head on ``s0_hat`` first). Values where the mask is off
            are never read, so they may be NaN.
        aux_mask_BT: bool ``[B, T]`` (or ``[B]``, per clip): where labels exist. The caller may
            also drop clean-context frames, whose ``s0_hat`` is the input itself.

    Returns:
        A float32 scalar; 0 when no frame has a label.
    """
    if s0_hat_BTDs.shape != aux_BTDs.shape or s0_hat_BTDs.dim() != 3:
        raise ValueError(
            f"s0_hat_BTDs {tuple(s0_hat_BTDs.shape)} and aux_BTDs {tuple(aux_BTDs.shape)} must "
            "be the same [B, T, Ds]"
        )
    B, T = s0_hat_BTDs.shape[:2]
    if aux_mask_BT.shape == (B,):
        aux_mask_BT = aux_mask_BT[:, None].expand(B, T)
    if aux_mask_BT.shape != (B, T) or aux_mask_BT.dtype != torch.bool:
        raise ValueError(
            f"aux_mask_BT must be bool [{B}, {T}] or [{B}], got {aux_mask_BT.dtype} "
            f"{tuple(aux_mask_BT.shape)}"
        )
    # Missing labels are replaced by the (detached) prediction rather than masked afterwards: a
    # NaN label would otherwise reach the gradient as 0 * NaN.
    aux = torch.where(aux_mask_BT[..., None], aux_BTDs.to(s0_hat_BTDs.dtype), s0_hat_BTDs.detach())
    return reduce_frame_loss(frame_mse(s0_hat_BTDs, aux), valid_BT=aux_mask_BT)


def aux_weight(step: int, lambda_aux: float, decay_steps: int, schedule: str = "cosine") -> float:
    """The decaying weight of ``L_aux``: ``lambda_aux`` at step 0, 0 from ``decay_steps`` on.

    With ``p = min(step / decay_steps, 1)``:

    - ``cosine``: ``lambda_aux * (1 + cos(pi * p)) / 2`` (flat start and end: the labels shape
      the struct stream early, and the switch-off is gentle);
    - ``linear``: ``lambda_aux * (1 - p)``.

    Both are non-increasing in ``step``. The labels are a scaffold (the proposal's FLAME
    supervision): once the struct stream has learned a 3-D-aware code, the diffusion loss alone
    decides it, so label noise stops pulling on it.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
        raise ValueError(f"decay_steps must be a positive integer, got {decay_steps!r}")
    if not math.isfinite(lambda_aux) or lambda_aux < 0:
        raise ValueError(f"lambda_aux must be a finite number >= 0, got {lambda_aux!r}")
    if schedule not in AUX_SCHEDULES:
        raise ValueError(f"schedule must be one of {AUX_SCHEDULES}, got {schedule!r}")
    p = min(step / decay_steps, 1.0)
    if schedule == "linear":
        return float(lambda_aux * (1.0 - p))
    return float(lambda_aux * 0.5 * (1.0 + math.cos(math.pi * p)))


def mouth_box_to_latent(
    box_px_BT4: torch.Tensor,
    image_size: int | tuple[int, int],
    latent_size: int | tuple[int, int],
) -> torch.Tensor:
    """Scales pixel boxes ``(x0, y0, x1, y1)`` to latent pixels.

    Both coordinate systems put pixel ``i`` on ``[i, i + 1)``, so the map is a pure scale,
    ``x * w / W`` and ``y * h / H`` (no half-pixel shift).

    Args:
        box_px_BT4: ``[..., 4]`` boxes in image pixels (``synthtalk.mouth_box``'s convention).
        image_size: ``H`` (square) or ``(H, W)`` of the images the boxes refer to.
        latent_size: ``h`` or ``(h, w)`` of the latents.

    Returns:
        Float ``[..., 4]`` boxes in latent pixels. A horizontally flipped latent needs the box
        flipped too (``x0' = w - x1``, ``x1' = w - x0``); a temporal codec needs one box per
        latent frame (e.g. the union of the boxes of the frames it covers).
    """
    if box_px_BT4.shape[-1] != 4:
        raise ValueError(f"box_px_BT4 must end in 4 coordinates, got {tuple(box_px_BT4.shape)}")
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    if min(H, W, h, w) < 1:
        raise ValueError(f"sizes must be positive, got image {image_size}, latent {latent_size}")
    box = box_px_BT4.float() if not box_px_BT4.is_floating_point() else box_px_BT4
    scale = box.new_tensor([w / W, h / H, w / W, h / H])
    return box * scale


def mouth_weight_map(
    box_BT4: torch.Tensor, height: int, width: int, mouth_weight: float
) -> torch.Tensor:
    """Per-latent-pixel loss weights: ``1 + (mouth_weight - 1) * coverage``.

    ``coverage`` is the fraction of latent pixel ``(i, j)`` (the square ``[j, j + 1) x [i, i +
    1)``) that lies inside the box, so a box edge between pixel centres gives its pixels a
    partial weight, and the map changes continuously with the box (no jump when a box edge
    crosses a pixel centre).

    Why: the mouth is a small part of a talking-head frame, and the part that only the audio
    explains; with a plain mean over the frame its error is drowned by the rest (identity, pose,
    background), so a small model learns a still mouth first. Weighting the mouth region up is
    the usual remedy in talking-head generation (e.g. Wav2Lip's and many successors' mouth or
    lower-face losses).

    Args:
        box_BT4: ``[B, T, 4]`` boxes ``(x0, y0, x1, y1)`` in latent pixels
            (:func:`mouth_box_to_latent`).
        height, width: the latent size ``H, W``.
        mouth_weight: the weight of a pixel fully inside the box (>= 1; 1 gives all ones).

    Returns:
        Float ``[B, T, H, W]`` weights in ``[1, mouth_weight]``.
    """
    if box_BT4.dim() != 3 or box_BT4.shape[-1] != 4:
        raise ValueError(f"box_BT4 must be [B, T, 4], got {tuple(box_BT4.shape)}")
    if not math.isfinite(mouth_weight) or mouth_weight < 1:
        raise ValueError(f"mouth_weight must be a finite number >= 1, got {mouth_weight!r}")
    box = box_BT4 if box_BT4.is_floating_point() else box_BT4.float()
    x0, y0, x1, y1 = (box[..., k, None] for k in range(4))
    cols = torch.arange(width, device=box.device, dtype=box.dtype)
    rows = torch.arange(height, device=box.device, dtype=box.dtype)
    cover_x_BTW = (torch.minimum(cols + 1, x1) - torch.maximum(cols, x0)).clamp(0, 1)
    cover_y_BTH = (torch.minimum(rows + 1, y1) - torch.maximum(rows, y0)).clamp(0, 1)
    coverage_BTHW = cover_y_BTH[..., :, None] * cover_x_BTW[..., None, :]
    return 1.0 + (mouth_weight - 1.0) * coverage_BTHW


def weighted_frame_mse(
    pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, weight_BTHW: torch.Tensor
) -> torch.Tensor:
    """Per-frame MSE under per-pixel weights: ``sum_hw w * mean_c (pred - target)^2 / sum_hw
    w``, ``[B, T, C, H, W] -> [B, T]``.

    A weighted *mean* per frame: with all weights equal it is :func:`df_core.frame_mse`, and a
    larger mouth weight moves the frame's loss towards the mouth without changing its scale
    (the balance with ``L_struct`` and the learning rate stay as tuned).
    """
    if pred_BTCHW.shape != target_BTCHW.shape or pred_BTCHW.dim() != 5:
        raise ValueError(
            f"pred {tuple(pred_BTCHW.shape)} and target {tuple(target_BTCHW.shape)} must be the "
            "same [B, T, C, H, W]"
        )
    B, T, _, H, W = pred_BTCHW.shape
    if weight_BTHW.shape != (B, T, H, W):
        raise ValueError(
            f"weight_BTHW must be [{B}, {T}, {H}, {W}], got {tuple(weight_BTHW.shape)}"
        )
    err_BTHW = (pred_BTCHW.float() - target_BTCHW.float()).pow(2).mean(dim=2)
    w = weight_BTHW.float()
    return (w * err_BTHW).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
