"""The one exception the eval commands raise for bad input: the CLI prints it without a traceback."""


class UsageError(ValueError):
    """Bad input from the user (a path, a column, a flag), with a message that names it."""
