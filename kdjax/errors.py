"""The error type for bad input: the CLI prints its message alone and exits non-zero."""


class UserError(ValueError):
  """Bad input (unknown name, config typo, missing data or checkpoint): the message names the fix."""
