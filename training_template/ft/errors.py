"""The template's one error: the job's inputs cannot be used (exit 2, one line)."""

from __future__ import annotations

EXIT_USAGE = 2  # the job's inputs are unusable; retrying will not help


class TemplateError(Exception):
    """The job's inputs cannot be used; the message is the one-line reason."""
