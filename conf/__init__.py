"""lakeloom: conf package."""
