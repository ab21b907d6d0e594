"""The field's metrics on real videos, with the published networks and protocols.

Modules (each network with its real loading code; weights are never downloaded):

- ``weights``: the published weight files (name, where published, format) and strict loading.
- ``fid``: pytorch-fid's InceptionV3 (2048-d pool3 features) and FID.
- ``fvd``: StyleGAN-V's I3D TorchScript protocol (16-frame clips) and FVD.
- ``lpips_metric``: LPIPS (the ``lpips`` package, AlexNet trunk, v0.1 heads).
- ``syncnet``: SyncNet ``S`` (syncnet_python keys), its MFCC front end, LSE-C / LSE-D and offset.
- ``arcface``: ArcFace iresnet100 on 5-point-aligned 112x112 crops, CSIM.
- ``faces``: face boxes and 5 points per frame (a detector interface; landmark files).
- ``evaluate``: ``evaluate_real(pred_dir, ref_dir, out_dir, weights_dir)``: per video,
  aggregate, windowed long-sequence curves, ``metrics.json`` + ``report.md`` + plots.
"""

METRICS = ("fid", "fvd", "lpips", "sync", "csim")  # what ``dualforce eval --real`` computes
WINDOWS = (32, 128, 256, 512)  # the proposal's long-sequence lengths, frames
