"""Toy models with controlled geometry: a quadratic landscape and a neural network (the quartic law), and a
gravity toy with a training history (v_rev). Import from the submodules."""

__all__: list[str] = []
