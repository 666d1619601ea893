"""The one exception type the CLI turns into a single clear error line.

Raise `UserError` for anything the user can fix (a config field, a path, a
count); its message should name the field and say the fix. The CLI prints
`poisonjax: error: <message>` and exits with status 2, and nothing already
written is touched.
"""


class UserError(Exception):
  """Bad input the user can fix. The message names the field and the fix."""


def field_error(field: str, value, problem: str, fix: str) -> UserError:
  """Builds the standard message: `config.X=V: problem; fix`."""
  return UserError(f"{field}={value!r}: {problem}; {fix}")
