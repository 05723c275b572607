"""The pieces the jobs share: configs turned into engine objects (``build``, the only place), drawing images from a
score model (``drawing``), evaluation, watching quality while training, and tuned-grid files."""
