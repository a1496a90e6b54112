"""ftbench: a benchmark harness for LLM fine-tuning methods."""

__version__ = "0.1.0"
