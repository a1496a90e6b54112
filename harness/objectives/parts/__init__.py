"""What the objectives share or build on: losses, trainers' parts, data mixing, metrics of sequences.

Nothing here registers anything; `harness.objectives` imports these modules only when an objective
needs them, so reading a config never pays for torch."""
