"""kadr: large photo collections into answers with vision-language models."""

__version__ = "0.1.0"
