"""Training side of the bundled small models: generated data (`tinydata`), the trainer
(`train_tiny`, ``python -m spiffy_triton.training.train_tiny``), its evaluation and model
cards."""
