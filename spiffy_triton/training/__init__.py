"""Training side of the bundled small models: generated data (`tinydata`), what training
sequences look like (`sequences`), the trainer (`train_tiny`, ``python -m
spiffy_triton.training.train_tiny``), its evaluation (`evaluate`) and model cards (`card`).
Imports run one way: tinydata <- sequences <- card <- evaluate <- train_tiny."""
