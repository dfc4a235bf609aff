"""obliviate: selective unlearning of personal information in causal language models."""

__version__ = "0.1.0"
