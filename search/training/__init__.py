"""Layer 3, one model trained: `train` (the loop, epoch by epoch), `network` (building the
model from the study file, the input contract), `optim`, `augment` (the batch regularizers:
MixUp, CutMix, Cutout), `evaluation`, `auto` (models and budgets that fit the data) and
`placement` (which GPU a worker takes)."""
