"""The one exception type for mistakes a user can make (bad flag, missing file, ...).

The CLI prints its message as a single line and exits non-zero; everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
