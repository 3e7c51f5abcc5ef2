"""Errors about a user's input (a video, a bundle, a camera) that the command line reports as
one line naming the file, with exit status 2 (mambava.cli), instead of a traceback."""


class UserError(ValueError):
    """Bad input the user can fix; the message starts with the file it is about."""
