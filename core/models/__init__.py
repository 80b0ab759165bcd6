"""lakeloom: model factories (CLIP through open_clip)."""
