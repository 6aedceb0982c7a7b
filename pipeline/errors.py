"""The one exception the pipeline raises for bad input; tasks print its message instead of a traceback."""


class PipelineError(Exception):
    """A problem the user can fix: the message names it and says how."""
