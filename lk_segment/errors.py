"""Errors a user can fix: the command line prints their message as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (config, data, paths, run ids); the message says how to fix it."""
