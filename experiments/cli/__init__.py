"""What runs before anything is created: the training CLI, its checks and its one-line errors."""
