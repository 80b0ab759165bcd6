"""Lightning callbacks of lakeloom runs: the events log and RNG state in checkpoints."""
