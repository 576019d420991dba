"""Server-side training: recipes, the nested objective, the trainer, evaluation and run directories."""
