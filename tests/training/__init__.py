"""A training run: config, defaults, resume and crashes, bad input, DDP, full-resolution Dice, run records,
the path to the GPU."""
