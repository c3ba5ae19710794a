"""The one error the report code raises for bad input: a one-line message naming the file and
the field (the command line prints it and exits 2)."""


class ReportError(Exception):
    """A Result file that cannot be read, or is not a Result."""
