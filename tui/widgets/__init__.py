"""Textual widgets of the lakeloom TUI."""
