"""Chain-of-Prompts (CoP): one click per cell type segments every cell of that type."""

__version__ = "0.1.0"
