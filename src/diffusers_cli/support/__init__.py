"""Plain support below everything but the engine: errors, atomic files, distributed plumbing, progress reporting,
reading a user's image files, and image tensors as grids and PNGs. Nothing here knows about configs, models or runs."""
