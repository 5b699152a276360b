"""Training loop, devices and DDP, checkpoints."""
