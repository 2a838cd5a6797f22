"""Process-wide objects, built lazily on first use and shared by every request.

Cloud Functions gen2 serves concurrent requests from one process, so each of
these is thread-safe; building them is cheap and imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.core.logs import get_logger
from finetune_api.core.settings import Settings, get_settings
from finetune_api.core.teams import EVERYONE, Caller


@dataclass
class Services:
    settings: Settings
    secrets: Any
    client: Any
    jobs: Any
    events: Any
    insights: Any = None
    poll_state: Any = None
    deployments: Any = None
    serving: Any = None
    files: Any = None
    resume: Any = None
    retry: Any = None
    index: Any = None
    api_key: Any = None
    openai: Any = None  # built on the first /v1/ request (see openai_services)
    caller: Caller = EVERYONE  # whom these services act for
    teams: Any = None  # the configured teams (core/teams.TeamDirectory)
    configs: Any = None
    quota: Any = None  # project name -> its team's TeamQuota (None: no limits)
    push: Any = None
    announce: Any = None
    # The base graph's per-team graphs, built on a team's first request.
    by_caller: dict[Caller, Services] = field(default_factory=dict)


_services: Services | None = None
_lock = threading.Lock()
# Whom the current request acts for: set by the edge (``acting_for``) right after
# the key is checked, read by :func:`get_services`. Each request runs in its own
# context, so one request's team never leaks into another's.
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=EVERYONE)


@contextlib.contextmanager
def acting_for(caller: Caller) -> Iterator[None]:
    """Within the block, :func:`get_services` answers ``caller``'s services."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


def build_services(settings: Settings) -> Services:
    from finetune_api.baseten.client import BasetenClient
    from finetune_api.baseten.push import push_training_job
    from finetune_api.core.secrets import SecretStore
    from finetune_api.core.teams import TeamDirectory
    from finetune_api.insights.job_insights import JobInsights
    from finetune_api.jobs.file_use import file_users
    from finetune_api.jobs.index import index_from_settings
    from finetune_api.jobs.resume import ResumeService
    from finetune_api.jobs.runtime_config import RuntimeConfigs
    from finetune_api.jobs.service import JobService
    from finetune_api.notify.events import EventSink, submitted_event
    from finetune_api.polling.retry import RetryWatch
    from finetune_api.polling.stores import claims_from_settings, store_from_settings

    secrets = SecretStore(settings)
    teams = TeamDirectory(secrets, settings.project_name_prefix, settings.teams)

    def api_key() -> str:
        value = secrets.get("baseten_api_key")
        assert value is not None
        return value

    def push(config: Path) -> dict[str, Any]:
        return push_training_job(settings, api_key(), config)

    client = BasetenClient(settings, api_key)
    events = EventSink(
        settings, secrets, team_of=teams.team_of, name_of=project_names(client, teams)
    )

    def announce(job: Any, key: str | None, message_id: str | None) -> None:
        # Logged now, delivered off the request path: a slow receiver never
        # slows a submission, and a failing one never fails it.
        try:
            events.emit_later(submitted_event(job, idempotency_key=key, message_id=message_id))
        except Exception:  # noqa: BLE001 - logged, the job exists either way
            get_logger("runtime").exception("could not emit training_job.submitted")

    insights = JobInsights(settings, client, secrets)
    files = build_files(settings)
    # Index records carry their job's team once teams are on (never before).
    index = index_from_settings(
        settings, team_of=lambda name: teams.team_of(name) if teams.teams_on() else None
    )
    quota = build_quota(settings, client, teams, index)
    tokenizer, throughput, price = build_estimates(settings, client)
    jobs = JobService(
        settings,
        client,
        push,
        announce,
        progress=insights.progress,
        files=files,
        index=index.record,
        tokenizer=tokenizer,
        throughput=throughput,
        price=price,
        quota=quota,
    )
    # DELETE /files/{id} asks which job still needs the File (jobs sit above files).
    files.users = file_users(index, jobs.read_job)
    # Each job's own request, read back through Baseten; shared by its three readers.
    configs = RuntimeConfigs(client)
    resume = ResumeService(settings, client, jobs, configs)
    deployments, serving = build_serving(settings, client, api_key, configs)
    return Services(
        settings=settings,
        secrets=secrets,
        client=client,
        jobs=jobs,
        events=events,
        insights=insights,
        poll_state=store_from_settings(settings),
        deployments=deployments,
        serving=serving,
        files=files,
        resume=resume,
        retry=RetryWatch(resume, configs, claims_from_settings(settings)),
        index=index,
        api_key=api_key,
        teams=teams,
        configs=configs,
        quota=quota,
        push=push,
        announce=announce,
    )


def project_names(client: Any, teams: Any) -> Any:
    """A project id's name for an event that names only the id (one projects read per miss)."""
    known: dict[str, str] = {}

    def name_of(project_id: str) -> str | None:
        if not teams.teams_on():
            return None  # every event is team "default": nothing to read
        if project_id not in known:
            for project in client.list_projects():
                known[str(project.get("id"))] = str(project.get("name"))
        return known.get(project_id)

    return name_of


def build_quota(settings: Settings, client: Any, teams: Any, index: Any) -> Any:
    """``quota(project_name)``: that project's team's TEAM_LIMITS (None: no limits).

    Only once a ``team:`` entry exists; the lease lives beside the job index.
    """
    from finetune_api.jobs.quota import TeamLease, TeamQuota

    if not settings.team_limits:
        return None
    lease = TeamLease(index.store)
    quotas: dict[str, Any] = {}

    def quota(project_name: str) -> Any:
        if not teams.teams_on():
            return None
        team = teams.team_of(project_name)
        if team is None:
            return None
        found = quotas.get(team)
        if found is None:
            found = quotas[team] = TeamQuota(
                settings.team_limits, team, settings.project_name_prefix, client, lease
            )
        return found

    return quota


def build_for_caller(base: Services, caller: Caller) -> Services:
    """``caller``'s services: the base graph's clients and stores, seen through its team.

    A team's scope is its projects (``<PROJECT_NAME_PREFIX><team>-``), its Files,
    Uploads and index records; ``ADMIN_TEAM`` reads every team's (the base scope)
    but creates in its own prefix. Everything is shared with the base graph but
    the per-team views, so a team costs no extra connection or cache.
    """
    from finetune_api.core.teams import team_prefix
    from finetune_api.insights.job_insights import JobInsights
    from finetune_api.jobs.resume import ResumeService
    from finetune_api.jobs.service import JobService

    assert caller.team is not None
    settings = base.settings
    own = team_prefix(settings.project_name_prefix, caller.team)
    scoped = settings if caller.admin else settings.replace(project_name_prefix=own)
    visible = caller.owns
    files = base.files.for_caller(caller.team, None if caller.admin else visible)
    index = base.index.for_caller(None if caller.admin else visible)
    insights = JobInsights(scoped, base.client, base.secrets)
    tokenizer, throughput, price = build_estimates(scoped, base.client)
    jobs = JobService(
        scoped,
        base.client,
        base.push,
        base.announce,  # the same sink: every event carries data.team
        progress=insights.progress,
        files=files,
        index=index.record,
        tokenizer=tokenizer,
        throughput=throughput,
        price=price,
        own_prefix=own,
        quota=base.quota,
    )
    resume = ResumeService(scoped, base.client, jobs, base.configs)
    deployments, _ = build_serving(scoped, base.client, base.api_key, base.configs)
    if not caller.admin:
        team, index_store = caller.team, base.index

        def owns_project(project_id: str) -> bool | None:
            from finetune_api.jobs.index import IndexUnavailable

            try:
                recorded = index_store.project_team(project_id)
            except IndexUnavailable:
                return None  # storage down: the job decides (one Baseten read)
            return None if recorded is None else recorded == team

        deployments.owns_project = owns_project
    return Services(
        settings=scoped,
        secrets=base.secrets,
        client=base.client,
        jobs=jobs,
        events=base.events,
        insights=insights,
        poll_state=base.poll_state,
        deployments=deployments,
        serving=base.serving,
        files=files,
        resume=resume,
        retry=base.retry,
        index=index,
        api_key=base.api_key,
        caller=caller,
        teams=base.teams,
        configs=base.configs,
        quota=base.quota,
    )


def build_files(settings: Settings) -> Any:
    from finetune_api.files.service import FileService
    from finetune_api.files.stores import store_from_settings as files_store

    return FileService(
        files_store(settings),
        max_line_bytes=settings.max_line_bytes,
        url_ttl_seconds=settings.data_url_ttl_seconds,
        max_file_bytes=settings.max_file_bytes,
        allowed_buckets=settings.gcs_allowed_buckets,
        # Never read for a caller, whatever GCS_ALLOWED_BUCKETS says: the files (and
        # job index) bucket and the poll's state bucket.
        own_buckets=[b for b in (settings.files_bucket, settings.poll_state_bucket) if b],
        check_wait_seconds=settings.file_check_wait_seconds,
    )


def build_estimates(settings: Settings, client: Any) -> tuple[Any, Any, Any]:
    """What a dry run's estimate counts and measures with (docs/own-data.md).

    The model's tokenizer from the Hub (``HF_ENDPOINT`` honoured; huggingface_hub
    and tokenizers load on the first dry run, never here), the throughput of
    earlier jobs from their FT_METRICS lines, and the price (none is published).
    """
    from finetune_api.insights.throughput import MeasuredThroughput, no_published_price
    from finetune_api.jobs.tokenizer import HubTokenizers

    throughput = MeasuredThroughput(client, prefix=settings.project_name_prefix)
    tokenizers = HubTokenizers(
        max_bytes=settings.tokenizer_max_bytes, batch_seconds=settings.tokenizer_batch_seconds
    )
    return tokenizers, throughput, no_published_price


def build_serving(
    settings: Settings, client: Any, api_key: Any, configs: Any = None
) -> tuple[Any, Any]:
    """The deployment service and the poll's serving watch (truss loads on first deploy)."""
    from finetune_api.serving.deployments import DeploymentService
    from finetune_api.serving.watch import DeploymentWatch

    class TrussDeployer:
        def instance_types(self) -> list[Any]:
            from finetune_api.baseten.deploy import instance_types

            return instance_types(settings, api_key())

        def create(self, request: dict[str, Any]) -> dict[str, Any]:
            from finetune_api.baseten.deploy import create_from_checkpoint

            return create_from_checkpoint(settings, api_key(), request)

    deployments = DeploymentService(settings, client, TrussDeployer())
    return deployments, DeploymentWatch(settings, client, deployments, configs)


@dataclass
class OpenAIServices:
    """What ``/v1/`` needs beyond the services: the OpenAI-shaped views of them."""

    uploads: Any
    jobs: Any
    models: Any
    chat: Any


def build_openai(services: Services) -> OpenAIServices:
    from finetune_api.compat.chat import ChatProxy
    from finetune_api.compat.jobs import FineTuningJobs
    from finetune_api.compat.models import ModelDirectory
    from finetune_api.files.stores import store_from_settings as files_store
    from finetune_api.files.uploads import UploadService

    settings = services.settings
    jobs = services.jobs

    def allows(project_id: str, job_id: str) -> bool:
        from finetune_api.core.errors import NotFoundError

        if not settings.project_name_prefix:
            return True
        try:
            jobs.read_job(project_id, job_id)
        except NotFoundError:
            return False
        return True

    models = ModelDirectory(services.client, allows)
    uploads = UploadService(
        files_store(settings), services.files, max_part_bytes=settings.max_upload_bytes
    )
    return OpenAIServices(
        uploads=uploads,
        jobs=FineTuningJobs(settings, jobs, services.index, services.insights, models),
        models=models,
        chat=ChatProxy(
            settings.inference_url,
            services.api_key,
            models,
            max_seconds=settings.chat_max_seconds,
            max_bytes=settings.chat_max_bytes,
        ),
    )


def openai_services() -> OpenAIServices:
    services = get_services()
    if services.openai is None:
        with _lock:
            if services.openai is None:
                services.openai = build_openai(services)
    built: OpenAIServices = services.openai
    return built


def get_services(caller: Caller | None = None) -> Services:
    """The services acting for ``caller`` (default: the current request's, see ``acting_for``).

    Settings errors surface here as ConfigurationError.
    """
    global _services
    base = _services
    if base is None:
        with _lock:
            if _services is None:
                _services = build_services(get_settings())
            base = _services
    who = caller if caller is not None else _caller.get()
    if who.team is None:
        return base
    found = base.by_caller.get(who)
    if found is None:
        with _lock:
            found = base.by_caller.get(who)
            if found is None:
                found = base.by_caller[who] = build_for_caller(base, who)
    return found


def reset() -> None:
    """Forget the settings and services so the next call re-reads the environment.

    For tests and for programs that change their environment at run time.
    """
    global _services
    from finetune_api.core import settings

    with _lock:
        _services = None
        settings.reset()


__all__ = [
    "OpenAIServices",
    "Services",
    "acting_for",
    "build_for_caller",
    "build_services",
    "get_services",
    "openai_services",
    "reset",
]
