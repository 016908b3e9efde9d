"""The one exception type for mistakes a user can fix (bad config, bad data, a broken reward, …).

The CLI prints its message as a single line and exits non-zero; Python callers can catch it.
"""


class SelfSFTError(Exception):
    """A user-facing error whose message names the problem in one line."""
