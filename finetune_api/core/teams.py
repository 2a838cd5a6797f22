"""Teams: which team a key belongs to, what a team may see, and its limits.

``API_KEYS`` entries are ``team:key`` (an entry without ``team:`` belongs to
``default``). The edge reads the key once and turns it into a :class:`Caller`;
every layer below acts for that Caller and never sees a key.

A team's jobs live in Baseten projects named ``<PROJECT_NAME_PREFIX><team>-…``
(:func:`team_prefix`). Two team names where one is the other plus ``-…``
(``ml`` and ``ml-research``) are refused: ``ml-`` would then also cover every
project of ``ml-research``, so the boundary would leak. With no ``team:`` entry
at all there are no teams: one Caller sees everything, exactly as before teams.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from finetune_api.core import secret_values

TEAM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
DEFAULT_TEAM = "default"
LIMIT_NAMES = ("max_active_jobs", "max_active_gpus")


def check_team_name(name: Any) -> str:
    """``name`` when it is a team name (1-32 of a-z 0-9 -, starting with a letter)."""
    if not isinstance(name, str) or not TEAM_NAME.match(name):
        raise ValueError("a team name is 1-32 of a-z 0-9 -, starting with a letter")
    return name


@dataclass(frozen=True)
class Caller:
    """Whom a request acts for: decided once at the edge, handed down.

    ``team`` is None when no team is configured (every caller sees everything,
    as before teams); ``admin`` is True for ``ADMIN_TEAM``'s keys (and then).
    """

    team: str | None
    admin: bool = False

    @property
    def teams_on(self) -> bool:
        return self.team is not None

    @property
    def sees_all(self) -> bool:
        return self.team is None or self.admin

    @classmethod
    def of(cls, team: str | None, admin_team: str | None) -> Caller:
        """The caller acting for ``team``: an admin when it is ``ADMIN_TEAM``."""
        return cls(team=team, admin=admin_team is not None and team == admin_team)

    def owns(self, team: Any) -> bool:
        """Whether a record tagged ``team`` is this caller's to see (admin: all)."""
        return self.sees_all or team == self.team


EVERYONE = Caller(team=None, admin=True)


@dataclass(frozen=True)
class KeyTable:
    """The parsed ``API_KEYS``: each key's team, and whether teams are on."""

    entries: tuple[tuple[str, str], ...]  # (team, key)
    teams_on: bool

    @property
    def teams(self) -> frozenset[str]:
        return frozenset(team for team, _ in self.entries)


def split_entry(entry: str) -> tuple[str | None, str]:
    """``("team", "key")`` for ``team:key``, ``(None, entry)`` without a ``:``."""
    team, sep, key = entry.partition(":")
    return (team, key) if sep else (None, entry)


@functools.lru_cache(maxsize=8)
def key_table(text: str) -> KeyTable:
    """Parse an ``API_KEYS`` list; ValueError (never quoting a key) when any entry is bad.

    Remembered per text (a few lists at most: the current one, during a rotation two).
    """
    raw = secret_values.api_keys(text)  # non-empty, visible ASCII entries
    entries: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    named = False
    for position, entry in enumerate(raw, start=1):
        team, key = split_entry(entry)
        if team is not None:
            named = True
            if not TEAM_NAME.match(team):
                raise ValueError(
                    f"entry {position} names a bad team (1-32 of a-z 0-9 -, starting with a letter)"
                )
            if not key:
                raise ValueError(f"entry {position} has an empty key")
            if len(key) < secret_values.MIN_API_KEY_LENGTH:
                raise ValueError(
                    f"entry {position} has a key shorter than "
                    f"{secret_values.MIN_API_KEY_LENGTH} characters"
                )
        team = team or DEFAULT_TEAM
        if key in seen and seen[key] != team:
            raise ValueError(f"entry {position} gives a key to two teams")
        seen[key] = team
        entries.append((team, key))
    table = KeyTable(tuple(entries), named)
    if named:
        check_no_overlap(table.teams)
    return table


def check_no_overlap(teams: Any) -> None:
    """Refuse ``ml`` beside ``ml-research``: ``ml-`` would cover the other's projects."""
    names = sorted(teams)
    for name in names:
        for other in names:
            if other != name and other.startswith(f"{name}-"):
                raise ValueError(
                    f"team {other} extends team {name} with '-': their project prefixes "
                    "would overlap; rename one"
                )


def team_prefix(base: str | None, team: str) -> str:
    """Where ``team``'s projects live: ``<PROJECT_NAME_PREFIX><team>-``."""
    return f"{base or ''}{team}-"


def team_of_project(name: Any, base: str | None, teams: Any) -> str | None:
    """The configured team whose prefix ``name`` starts with (None: no team's)."""
    if not isinstance(name, str):
        return None
    for team in teams:
        if name.startswith(team_prefix(base, team)):
            return str(team)
    return None


def parse_limits(value: Any) -> dict[str, dict[str, int]] | None:
    """``TEAM_LIMITS``: ``{"<team>" or "*": {"max_active_jobs": n, "max_active_gpus": n}}``."""
    if value is None:
        return None
    if isinstance(value, dict):
        data = value
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("must be a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    limits: dict[str, dict[str, int]] = {}
    for team, rules in data.items():
        if team != "*":
            try:
                check_team_name(team)
            except ValueError:
                raise ValueError(f"{team!r} is not a team name or '*'") from None
        if not isinstance(rules, dict) or not rules:
            raise ValueError(
                f"{team}: must be an object with max_active_jobs and/or max_active_gpus"
            )
        unknown = sorted(set(rules) - set(LIMIT_NAMES))
        if unknown:
            raise ValueError(f"{team}: unknown limit(s) {', '.join(unknown)}")
        for name, number in rules.items():
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"{team}.{name}: must be a whole number >= 0")
        limits[team] = dict(rules)
    return limits


def limits_for(limits: dict[str, dict[str, int]] | None, team: str) -> dict[str, int]:
    """The team's own limits, else ``"*"``'s (a team's entry replaces ``"*"`` limit by limit)."""
    if not limits:
        return {}
    return {**limits.get("*", {}), **limits.get(team, {})}


__all__ = [
    "DEFAULT_TEAM",
    "EVERYONE",
    "Caller",
    "KeyTable",
    "check_team_name",
    "key_table",
    "limits_for",
    "parse_limits",
    "split_entry",
    "team_of_project",
    "team_prefix",
]


class TeamDirectory:
    """The configured teams, read through the secret store (so a rotation is picked up).

    Thread-safe: :func:`key_table` remembers the parsed table by the text it came from.
    """

    def __init__(self, secrets: Any, base_prefix: str | None, named: tuple[str, ...] = ()) -> None:
        self._secrets = secrets
        self._base = base_prefix
        self._named = frozenset(named)  # TEAMS: for functions without API_KEYS

    def table(self) -> KeyTable | None:
        text = self._secrets.get("api_keys", required=False) if self._secrets else None
        return None if text is None else key_table(text)  # parsed once per text

    def names(self) -> frozenset[str]:
        """Every configured team (empty: no teams, everything as before teams)."""
        table = self.table()
        keyed = table.teams if table is not None and table.teams_on else frozenset()
        return keyed | self._named

    def teams_on(self) -> bool:
        return bool(self.names())

    def team_of(self, project_name: Any) -> str | None:
        """The team a project belongs to (``default`` when no team is configured)."""
        names = self.names()
        if not names:
            return DEFAULT_TEAM
        return team_of_project(project_name, self._base, sorted(names))


__all__ += ["TeamDirectory"]
