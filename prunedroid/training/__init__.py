"""Training: the checkpoint record (checkpoint), the recipe, its presets and the loop (train), and several processes
under torchrun (distributed)."""
