"""The catalog of models and weights, downloads, pins, and the weights cache."""
