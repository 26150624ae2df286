"""Training: one run's setup, the step, the loop, losses, optimizer, checkpoints and metrics."""
