"""Toy models with controlled alignment geometry: a quadratic landscape and a small neural network."""
