"""Text shaped like a credential, replaced by ``[REDACTED]``: one pattern set for all text.

Known secrets (the Baseten key, the webhook secret, the API keys) are scrubbed
by value (:func:`finetune_api.core.logs.scrub`). Text from elsewhere (a job's
log lines, Baseten's ``error_message``) may hold *other* credentials: a Hugging
Face or GitHub token, an AWS key, a password in a URL. Those are found by shape:

* the token-shaped detectors of Yelp's ``detect-secrets`` (a maintained pattern
  set: AWS access key ids and quoted secret keys, GitHub and GitLab tokens,
  OpenAI, Slack, Stripe, SendGrid, PyPI, Square, Discord, Mailchimp and Azure
  storage keys, JWTs, and the password of ``scheme://user:password@host``);
* what it does not cover, here: Hugging Face tokens (``hf_…``, also glued to a
  preceding word, and the legacy ``api_org_…``), the Standard Webhooks secret
  (``whsec_…``), ``Authorization: Basic|Bearer …`` / ``Api-Key …`` credentials,
  and any ``NAME=value`` / ``NAME: value`` whose name says it holds a key, token,
  secret or password (``api_key=…``, ``x-api-key: …``, ``WANDB_API_KEY=…``,
  ``AWS_SECRET_ACCESS_KEY=…``); the name stays, the value goes.

Only the detectors' regular expressions are used (no scan, no verification,
nothing sent anywhere). Each text is bounded by its caller (a log line, an
error message), and every pattern is linear in it.
"""

from __future__ import annotations

import functools
import re

REDACTED = "[REDACTED]"

# detect-secrets detectors whose patterns are token-shaped (a prefix or a fixed
# form), named in _detector_patterns. Left out: the keyword and entropy detectors
# (covered by the NAME=value rule below, or too noisy for log text), public IPs
# (not secrets), and the loose shapes (Twilio, Telegram, Artifactory, npm) that
# match ordinary text.
# The detector whose group 1 is the secret itself (the rest of the match stays).
_GROUP_IS_SECRET = frozenset({"BasicAuthDetector"})

_NAME = (
    r"(?:[A-Za-z0-9]+[_.-])*"
    r"(?:api[_-]?key|apikey|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret"
    r"|(?:auth[_-]?|access[_-]?|refresh[_-]?|bearer[_-]?)?token(?!s)"
    r"|password|passwd|pwd|private[_-]?key|credentials?)"
)
# Ours: (pattern, whether group "keep" stays in front of the redaction).
_OWN = (
    # Hugging Face tokens, glued to a word or not, and the legacy organisation tokens.
    re.compile(r"hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]{10,}"),
    # An HTTP credential after its scheme: Authorization: Basic …, Bearer …, Api-Key ….
    re.compile(r"(?P<keep>(?i:\b(?:api-key|bearer|basic)[ \t]+))[A-Za-z0-9._~+/=-]{12,}"),
    # NAME=value, NAME: value, "NAME": "value", NAME = 'value'.
    re.compile(
        rf"(?P<keep>(?i:\b{_NAME})[\"']?[ \t]*[:=][ \t]*[\"']?)"
        r"(?![ \t]*\[REDACTED\])[^\s\"',;&]{6,}"
    ),
)


@functools.cache
def _detector_patterns() -> tuple[tuple[re.Pattern[str], bool], ...]:
    """The chosen detect-secrets patterns, loaded on first use (its import costs ~0.2 s)."""
    from detect_secrets.plugins import (
        aws,
        azure_storage_key,
        basic_auth,
        discord,
        github_token,
        gitlab_token,
        jwt,
        mailchimp,
        openai,
        pypi_token,
        sendgrid,
        slack,
        square_oauth,
        stripe,
    )

    detectors = (
        aws.AWSKeyDetector,
        azure_storage_key.AzureStorageKeyDetector,
        basic_auth.BasicAuthDetector,
        discord.DiscordBotTokenDetector,
        github_token.GitHubTokenDetector,
        gitlab_token.GitLabTokenDetector,
        jwt.JwtTokenDetector,
        mailchimp.MailchimpDetector,
        openai.OpenAIDetector,
        pypi_token.PypiTokenDetector,
        sendgrid.SendGridDetector,
        slack.SlackDetector,
        square_oauth.SquareOAuthDetector,
        stripe.StripeDetector,
    )
    return tuple(
        (pattern, detector.__name__ in _GROUP_IS_SECRET)
        for detector in detectors
        for pattern in detector.denylist
    )


def _redact_group(match: re.Match[str]) -> str:
    whole, start = match.group(0), match.start()
    first, last = match.span(1)
    return whole[: first - start] + REDACTED + whole[last - start :]


def _redact_keep(match: re.Match[str]) -> str:
    keep = match.groupdict().get("keep")
    return (keep or "") + REDACTED


def redact_credentials(text: str, *, load: bool = True) -> str:
    """``text`` with everything shaped like a credential replaced by ``[REDACTED]``.

    ``load=False`` (the log formatter's last line of defence) uses the
    detect-secrets patterns only once something has loaded them, so a cold
    start's first log line does not pay their import (~0.1 s); text from jobs
    and Baseten is scrubbed with ``load=True`` before it is logged or answered.
    """
    for pattern in _OWN:
        text = pattern.sub(_redact_keep, text)
    if load or _detector_patterns.cache_info().currsize:
        for pattern, group in _detector_patterns():
            text = pattern.sub(_redact_group if group else REDACTED, text)
    return text


__all__ = ["REDACTED", "redact_credentials"]
