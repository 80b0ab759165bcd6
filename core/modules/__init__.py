"""lakeloom: Lightning modules, one per model family."""
