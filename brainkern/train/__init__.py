"""Training engine: objectives, loops, run directories, checkpoints and resume."""
