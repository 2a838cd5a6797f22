"""What a secret's text may hold: the one check for direct values and Secret Manager alike.

A secret is used verbatim in an HTTP header (the Baseten key), a signature (the
webhook secret) or a comparison (the API keys), so a value holding a line
break, a tab or a stray space is not "close enough": it is a pasted comment, a
second line, a copy error, and it would end up in an error message or a log
line. Such a value is a configuration error, named by its setting and never
quoted. The one exception is a single trailing line break, the end of the line
that ``echo`` or an editor adds to a file; it is dropped.

``API_KEYS`` is a comma list; each entry is its own secret. A list that is
configured but names no key is an error too: an empty list must never mean
"no authentication".
"""

from __future__ import annotations

# A key shorter than this is guessable, and too short to be scrubbed from logs.
MIN_API_KEY_LENGTH = 8


def _strip_line_end(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _visible_ascii(text: str) -> bool:
    return all(33 <= ord(char) <= 126 for char in text)


def secret_value(text: str) -> str:
    """``text`` as the secret it must be; ValueError (never quoting it) otherwise."""
    value = _strip_line_end(text)
    if not value:
        raise ValueError("is empty")
    if not _visible_ascii(value):
        raise ValueError(
            "holds whitespace, a line break, a control or a non-ASCII character; "
            'store the bare value (e.g. printf %s "$VALUE" | gcloud secrets versions add ...)'
        )
    return value


def api_keys(text: str) -> tuple[str, ...]:
    """The keys of an ``API_KEYS`` comma list; ValueError when any entry is unusable."""
    value = _strip_line_end(text)
    if not value.strip(" ,"):
        raise ValueError("is set but names no key (a blank list never turns authentication off)")
    keys = tuple(part.strip(" ") for part in value.split(","))
    for position, key in enumerate(keys, start=1):
        if not key:
            raise ValueError(f"entry {position} of the comma list is empty")
        if not _visible_ascii(key):
            raise ValueError(
                f"entry {position} holds whitespace, a line break, a control or a "
                "non-ASCII character"
            )
        if len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(f"entry {position} is shorter than {MIN_API_KEY_LENGTH} characters")
    return keys


def check(field: str, text: str) -> str:
    """The value of secret setting ``field`` (``api_keys`` keeps its list form)."""
    if field == "api_keys":
        return ",".join(api_keys(text))
    return secret_value(text)


__all__ = ["MIN_API_KEY_LENGTH", "api_keys", "check", "secret_value"]
