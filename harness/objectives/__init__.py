"""Training objectives beyond SFT (issue 8, in progress): distillation losses and students so far."""
