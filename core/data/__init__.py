"""Data loading from the lake: the Lance data module, its sampler and decode helpers."""
