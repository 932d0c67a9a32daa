"""The ``retllm`` command line."""
