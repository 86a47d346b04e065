"""Dataset loaders (optional extras)."""
