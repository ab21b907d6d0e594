"""DualForce evaluation: SynthTalk probe metrics, real-video metrics, reports, and the demo.

Modules (imported on use, so ``dualforce`` starts fast):

- ``df_eval.probe``: ``load_or_train_probe(corpus_dir, ProbeConfig())`` -> ``Probe`` (a CNN
  reading pose, expression and identity from frames; cached in ``<corpus>/.probe/<key>/``).
- ``df_eval.metrics``: pure metric functions (lip sync, pose, identity drift, PSNR/SSIM,
  Fréchet distance, jitter).
- ``df_eval.evaluate``: ``evaluate_frames({clip_id: uint8 [T, H, W, 3]}, corpus_dir)`` for
  in-memory frames, ``evaluate_videos(pred_dir, corpus_dir)``, and ``evaluate(pred_dir,
  corpus_dir, out_dir)`` which also writes the report.
- ``df_eval.report``: ``write_report(out_dir, {name: result}, probe=..., train_log=...)``:
  ``metrics.json``, ``report.md``, PNG plots.
- ``df_eval.real``: the field's metrics on real videos (FID, FVD, LPIPS, Sync-C/Sync-D, CSIM)
  with the published networks, and ``evaluate_real`` behind ``dualforce eval --real``.
- ``df_eval.cli``: ``dualforce eval --pred DIR --data DIR`` (SynthTalk, the default) or
  ``dualforce eval --real --pred DIR --ref DIR --weights DIR``.
"""
