"""DualForce inference: streaming generation with the KV cache."""
