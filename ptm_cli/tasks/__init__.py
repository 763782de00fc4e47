"""What ptm does with a model: one module per task."""
