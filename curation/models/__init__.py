"""Model loading: real checkpoints and the tiny ones go through the same ``from_pretrained`` code."""
