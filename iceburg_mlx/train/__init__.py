"""Training: recipes, LoRA/DoRA layers, losses, the loop, the adapter registry."""
