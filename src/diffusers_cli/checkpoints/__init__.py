"""Checkpoints without pickle: the typed ModelCard (``card``), safetensors model files (``weights``) and a resumable
training state (``train_state``)."""
