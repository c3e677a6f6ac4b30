"""The error a user sees as one line: what is wrong and what is accepted."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key, the value and what is accepted."""
