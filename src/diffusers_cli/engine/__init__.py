"""The diffusion engine: plain tensors and callables; imports neither config nor cli."""
