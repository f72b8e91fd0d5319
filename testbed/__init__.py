"""testbed: measure and block fine-tuning reversion in toy models and causal LMs through one shared layer."""

__version__ = "0.1.0"

__all__ = ["__version__"]
