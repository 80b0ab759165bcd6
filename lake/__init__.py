"""lakeloom: lake package."""
