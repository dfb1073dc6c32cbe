"""Task-scored evaluation: multiple choice, generation, perplexity (`ftscale eval`, and the
trainer's ``eval.tasks``)."""
