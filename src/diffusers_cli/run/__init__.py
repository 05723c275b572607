"""A run directory: its layout and file names (written once, in ``layout``), the one reader of its files
(``reader``: nothing from outside the run), the one-writer lock, what the run says about itself (``facts``), the
report page, its plots, TensorBoard events and the code's provenance."""
