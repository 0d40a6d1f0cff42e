"""Data: sources (files on disk), splits on the device, preprocessing and augmentation. It also holds the shipped MNIST sample (mnist_sample.npz) and its licence."""
