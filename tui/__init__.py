"""lakeloom: tui package."""
