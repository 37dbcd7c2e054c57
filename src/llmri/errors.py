"""The one exception type llmri raises for bad input: its message is a single line."""


class LlmriError(ValueError):
    """Bad input or an unusable resource. The message names the file, row or argument."""
