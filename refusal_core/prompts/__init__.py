"""Prompts: the PromptSet and its splits (``sets``), loaders for the built-in data, files
and the hub (``loaders``), and the chat template with its post-instruction positions
(``chat``)."""
