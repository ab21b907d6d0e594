"""DualForce evaluation: SynthTalk probe metrics, reports, and the end-to-end demo."""
