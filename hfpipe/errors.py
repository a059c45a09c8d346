"""One error type for everything a user can fix. The CLI prints its message on one line, no traceback."""


class HfpipeError(Exception):
    """A user-facing failure. exit_code 2 = bad usage/recipe, 1 = a stage failed while running."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class RecipeError(HfpipeError):
    """The recipe (or an override) is invalid: exit code 2."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
