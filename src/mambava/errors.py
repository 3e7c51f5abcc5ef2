"""Errors about a user's input (a video, a bundle, a camera) that the command line reports as
one line naming the file, with exit status 2 (mambava.cli), instead of a traceback."""


class UserError(ValueError):
    """Bad input the user can fix; the message starts with the file it is about."""


class DeviceError(UserError, RuntimeError):
    """A setting this machine cannot run (CUDA asked for where torch sees none, mamba-ssm's kernel
    without mamba-ssm): reported at once as one line, before any work is done."""
