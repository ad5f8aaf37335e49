"""What can go wrong with one LLM call, in words a person understands (the provider's own text is
never quoted: it may echo a key or a prompt)."""


class LLMConfigError(Exception):
    """The endpoint refuses us for a reason retries cannot fix (key, permission, model, URL)."""


class LLMCallError(Exception):
    """This request failed (after retries where that made sense); another request may work.

    `kind` says what sort of failure it was ("HTTP 500", "timeout"…) without the details."""

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = f"the LLM call failed ({kind})"


class LLMStopped(Exception):
    """The request was not sent: the caller's should_stop gave this reason."""
