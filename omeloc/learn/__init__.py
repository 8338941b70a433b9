"""Learning: models, normalization, crop sampling, checkpoints, training."""
