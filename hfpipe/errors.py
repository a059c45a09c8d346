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


def first_line(e: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message, for one-line errors; ``empty`` (default: the exception's type name)
    when the message is blank."""
    text = str(e).strip()
    if not text:
        return type(e).__name__ if empty is None else empty
    return text.splitlines()[0]
