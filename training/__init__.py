"""Video data, training, evaluation and export for non-local models."""
