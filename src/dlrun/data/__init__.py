"""Package data: the bundled MNIST sample (mnist_sample.npz) and its licence."""
