"""Model-side pieces of the trainer: model loading, packed-batch attention, loss normalisation."""
