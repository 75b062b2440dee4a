"""A run's bookkeeping: its record and lock, checkpoints, preemption, speed, W&B, progress and reports."""
