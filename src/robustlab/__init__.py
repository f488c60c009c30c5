"""robustlab: adversarial robustness of image classifiers in PyTorch."""

__version__ = "0.1.0"
