"""Plain support, the floor below every layer (the engine included): errors, atomic files, distributed plumbing,
progress reporting, reading a user's image files, and image tensors as grids and PNGs. Nothing here knows about configs, models or runs."""
