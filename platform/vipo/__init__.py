"""vipo: Video Inpainting Preference Optimization on Ray."""

__version__ = "0.1.0"
