"""Textual screens of the lakeloom TUI."""
