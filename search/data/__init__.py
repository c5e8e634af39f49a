"""Layer 2, the images: `dataset` (`Dataset`, `load_dataset`: splits, subsets, label noise),
the readers of each format (`readers`: CIFAR, MNIST-style `idx`, `imagefolder`, `userdata` for
the user's own loader), `images` (size and channel handling) and `sample` (small files for
tests and examples)."""
