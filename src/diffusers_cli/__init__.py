"""diffusers-cli: train, sample, condition, impute with and evaluate score-based diffusion models of images."""

__version__ = "0.1.0"
