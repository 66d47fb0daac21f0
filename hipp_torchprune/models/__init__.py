"""Model construction helpers: tokenizers, processors and tiny offline configs."""
