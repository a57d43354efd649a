"""An experiment: its arms, the run folder, and running the arms on an engine."""
