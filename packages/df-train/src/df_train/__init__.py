"""df-train: multi-modal Diffusion Forcing training for DualForce."""
