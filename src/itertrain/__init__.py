"""itertrain: iterative training of Hugging Face causal LMs that never loses work."""

__version__ = "0.1.0"
