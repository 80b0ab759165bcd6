"""lakeloom: core package."""
