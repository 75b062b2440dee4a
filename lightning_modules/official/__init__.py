"""The official TensorFlow DeepLab checkpoints: reading them (in a TensorFlow child process) and converting."""
