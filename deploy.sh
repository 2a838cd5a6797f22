#!/usr/bin/env bash
# Deploy the three Cloud Run functions (gen2) of this project to a GCP project:
# private, scheduled, with pinned Secret Manager versions, and the private
# bucket of users' training files. Idempotent: run it again and only
# `functions deploy` / `scheduler jobs update` are re-issued.
# `./deploy.sh --help` for the flags.
set -euo pipefail

SCRIPT_NAME=${0##*/}
SCRIPT_SRC=${BASH_SOURCE[0]}
if [[ $SCRIPT_SRC == */* ]]; then SCRIPT_DIR=${SCRIPT_SRC%/*}; else SCRIPT_DIR=.; fi
SCRIPT_DIR=$(cd -- "$SCRIPT_DIR" && pwd)

# emit: copy stdin (a here-document) to stdout, without needing cat.
emit() {
	local l
	while IFS= read -r l || [[ -n $l ]]; do printf '%s\n' "$l"; done
}

usage() {
	emit <<EOF
Usage: $SCRIPT_NAME --project PROJECT --region REGION [options]

Deploys train_http, train_pubsub and poll_jobs as Cloud Run functions (gen2,
python312), a Pub/Sub topic, two service accounts, two Cloud Storage buckets
(the poll's state; users' uploaded training files, deleted after
--files-retention-days), the IAM bindings they need and a Cloud Scheduler job
that calls poll_jobs. Safe to run again.

Required (flag or environment variable):
  --project ID                 GCP project                  [GOOGLE_CLOUD_PROJECT]
  --region REGION              e.g. us-central1             [REGION]

Secrets (Secret Manager secrets you created beforehand; versions are pinned):
  --baseten-secret NAME        Baseten API key     [BASETEN_SECRET_NAME]  (baseten-api-key)
  --baseten-secret-version N   pin this version instead of the latest enabled one
                                                   [BASETEN_SECRET_VERSION]
  --webhook-url URL            where events are POSTed (https)         [WEBHOOK_URL]
  --webhook-secret NAME        Standard Webhooks signing secret (whsec_...);
                               required with --webhook-url [WEBHOOK_SECRET_NAME]
  --webhook-secret-version N                       [WEBHOOK_SECRET_VERSION]
  --api-keys-secret NAME       comma list of API keys for train_http (X-Api-Key)
                                                   [API_KEYS_SECRET_NAME]
  --api-keys-secret-version N                      [API_KEYS_SECRET_VERSION]

Teams (docs/deploy.md "Teams"; the keys are team:key entries of --api-keys-secret):
  --teams LIST                 the team names, comma list (poll_jobs and
                               train_pubsub hold no keys: this tells them)  [TEAMS]
  --admin-team NAME            the team whose keys see every team's      [ADMIN_TEAM]
  --team-limits JSON           {"<team>" or "*": {"max_active_jobs": n,
                               "max_active_gpus": n}}                   [TEAM_LIMITS]

Names (all but the secrets get --name-prefix in front):
  --name-prefix PREFIX         e.g. "dev-"                             [NAME_PREFIX]
  --http-function NAME         (train-http)                          [HTTP_FUNCTION]
  --pubsub-function NAME       (train-pubsub)                      [PUBSUB_FUNCTION]
  --poll-function NAME         (poll-jobs)                           [POLL_FUNCTION]
  --topic NAME                 (training-requests)                           [TOPIC]
  --scheduler-job NAME         (poll-training-jobs)                  [SCHEDULER_JOB]
  --runtime-sa NAME            runtime service account id (finetune-runtime)
                                                                   [RUNTIME_SA_NAME]
  --scheduler-sa NAME          scheduler service account id (finetune-scheduler)
                                                                 [SCHEDULER_SA_NAME]
  --state-bucket NAME          bucket of the poll's state, created in --region
                               (PREFIXPROJECT-finetune-state; no prefix added)
                                                                      [STATE_BUCKET]
  --files-bucket NAME          bucket of users' uploaded training files, created
                               in --region (PREFIXPROJECT-finetune-files; no
                               prefix added)                         [FILES_BUCKET]

Behaviour:
  --schedule CRON              poll schedule ("*/5 * * * *")              [SCHEDULE]
  --time-zone TZ               schedule time zone (Etc/UTC)              [TIME_ZONE]
  --scheduler-region REGION    Cloud Scheduler location (--region)  [SCHEDULER_REGION]
  --poll-lookback-seconds N    POLL_LOOKBACK_SECONDS (2 x the schedule interval,
                               at least 600)                 [POLL_LOOKBACK_SECONDS]
  --files-retention-days N     uploaded files (and their records) are deleted
                               this many days after upload, 1-3650 (30)
                                                              [FILES_RETENTION_DAYS]
  --gcs-allowed-buckets LIST   comma list of the buckets whose gs:// objects may be
                               named as training data (GCS_ALLOWED_BUCKETS on
                               train_http and train_pubsub; never the state or
                               files bucket). Unset: every gs:// reference is refused
                                                               [GCS_ALLOWED_BUCKETS]
  --env KEY=VALUE              extra non-secret env var for all three functions
                               (repeatable), e.g. BASETEN_TEAM_ID=...
  --source DIR                 source to upload (this script's folder)  [SOURCE_DIR]
  --build-service-account SA   passed to functions deploy (projects/P/serviceAccounts/EMAIL)
  --public                     allow unauthenticated calls to train_http; refused
                               unless --api-keys-secret is given
  --dry-run                    print the gcloud commands instead of running them
                               (lookups are not run: everything is assumed missing)
                                                                         [DRY_RUN=1]
  --teardown                   delete what this script creates, both buckets
                               included: users' uploaded files are deleted too
                               (not the secrets, not the enabled APIs)
  -h, --help                   this text
EOF
}

die() {
	printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
	exit 1
}
info() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------- settings --
PROJECT=${GOOGLE_CLOUD_PROJECT:-}
REGION=${REGION:-}
NAME_PREFIX=${NAME_PREFIX:-}
HTTP_FUNCTION=${HTTP_FUNCTION:-train-http}
PUBSUB_FUNCTION=${PUBSUB_FUNCTION:-train-pubsub}
POLL_FUNCTION=${POLL_FUNCTION:-poll-jobs}
TOPIC=${TOPIC:-training-requests}
SCHEDULER_JOB=${SCHEDULER_JOB:-poll-training-jobs}
RUNTIME_SA_NAME=${RUNTIME_SA_NAME:-finetune-runtime}
SCHEDULER_SA_NAME=${SCHEDULER_SA_NAME:-finetune-scheduler}
STATE_BUCKET=${STATE_BUCKET:-}
FILES_BUCKET=${FILES_BUCKET:-}
FILES_RETENTION_DAYS=${FILES_RETENTION_DAYS:-}
GCS_ALLOWED_BUCKETS=${GCS_ALLOWED_BUCKETS:-}
SCHEDULE=${SCHEDULE:-*/5 * * * *}
TIME_ZONE=${TIME_ZONE:-Etc/UTC}
SCHEDULER_REGION=${SCHEDULER_REGION:-}
POLL_LOOKBACK=${POLL_LOOKBACK_SECONDS:-}
BASETEN_SECRET=${BASETEN_SECRET_NAME:-baseten-api-key}
BASETEN_SECRET_VERSION=${BASETEN_SECRET_VERSION:-}
WEBHOOK_URL=${WEBHOOK_URL:-}
WEBHOOK_SECRET=${WEBHOOK_SECRET_NAME:-}
WEBHOOK_SECRET_VERSION=${WEBHOOK_SECRET_VERSION:-}
API_KEYS_SECRET=${API_KEYS_SECRET_NAME:-}
API_KEYS_SECRET_VERSION=${API_KEYS_SECRET_VERSION:-}
TEAMS=${TEAMS:-}
ADMIN_TEAM=${ADMIN_TEAM:-}
TEAM_LIMITS=${TEAM_LIMITS:-}
SOURCE_DIR=${SOURCE_DIR:-$SCRIPT_DIR}
BUILD_SA=
DRY_RUN=${DRY_RUN:-0}
case $DRY_RUN in
1 | true | yes) DRY_RUN=1 ;;
0 | false | no | '') DRY_RUN=0 ;;
*) printf '%s: error: DRY_RUN must be 1 or 0\n' "$SCRIPT_NAME" >&2 && exit 1 ;;
esac
PUBLIC=0
TEARDOWN=0
EXTRA_ENV=()
# Seconds between retries of IAM bindings on a service account created moments
# ago (IAM is eventually consistent).
RETRY_DELAY=${DEPLOY_RETRY_DELAY:-5}
if [[ ! $RETRY_DELAY =~ ^[0-9]{1,3}$ ]]; then
	printf '%s: error: DEPLOY_RETRY_DELAY must be a number of seconds\n' "$SCRIPT_NAME" >&2
	exit 1
fi

RUNTIME=python312

# Sizing. The functions mostly wait on Baseten's API (network-bound), so one
# instance serves several requests at once; concurrency > 1 needs >= 1 vCPU
# and THREADS must match it (functions-framework runs THREADS threads).
# train_http: submit/read/list/stop; a submit stages the template and uploads
# it, which fits in 512Mi and well under 120s. 10 instances x 8 = 80 requests
# in flight caps spend on a traffic spike.
HTTP_MEMORY=512Mi HTTP_CPU=1 HTTP_CONCURRENCY=8 HTTP_TIMEOUT=120s HTTP_MAX_INSTANCES=10
# train_pubsub: same work as a submit; longer timeout since nobody waits on it
# and a slow Baseten should finish rather than be retried (event functions
# allow up to 540s).
PUBSUB_MEMORY=512Mi PUBSUB_CPU=1 PUBSUB_CONCURRENCY=8 PUBSUB_TIMEOUT=300s PUBSUB_MAX_INSTANCES=10
# poll_jobs: one poll reads the active jobs and keeps its state in one object;
# two polls at once would race for it (the later writer loses), so one
# instance handling one request at a time.
POLL_MEMORY=512Mi POLL_CPU=1 POLL_CONCURRENCY=1 POLL_TIMEOUT=300s POLL_MAX_INSTANCES=1
# Cloud Scheduler waits a little longer than the function may run.
SCHEDULER_ATTEMPT_DEADLINE=320s

APIS=(
	cloudfunctions.googleapis.com
	run.googleapis.com
	cloudbuild.googleapis.com
	artifactregistry.googleapis.com
	eventarc.googleapis.com
	pubsub.googleapis.com
	secretmanager.googleapis.com
	cloudscheduler.googleapis.com
	iam.googleapis.com
	logging.googleapis.com
	storage.googleapis.com
	# signBlob: the runtime account signs the read URL a training job gets.
	iamcredentials.googleapis.com
)

VALUE_FLAGS=" --project --region --name-prefix --http-function --pubsub-function --poll-function
 --topic --scheduler-job --runtime-sa --scheduler-sa --schedule --time-zone --scheduler-region
 --poll-lookback-seconds --baseten-secret --baseten-secret-version --webhook-url --webhook-secret
 --webhook-secret-version --api-keys-secret --api-keys-secret-version --env --source
 --teams --admin-team --team-limits
 --build-service-account --state-bucket --files-bucket --files-retention-days --gcs-allowed-buckets "
VALUE_FLAGS=${VALUE_FLAGS//$'\n'/ }

need_value() {
	# $1 flag, $2 number of remaining args (including the flag)
	[[ $2 -ge 2 ]] || die "$1 needs a value"
}

parse_args() {
	local flag value
	while [[ $# -gt 0 ]]; do
		flag=$1
		case $flag in
		-h | --help)
			usage
			exit 0
			;;
		--dry-run)
			DRY_RUN=1
			shift
			continue
			;;
		--public)
			PUBLIC=1
			shift
			continue
			;;
		--teardown)
			TEARDOWN=1
			shift
			continue
			;;
		--*=*)
			value=${flag#*=}
			flag=${flag%%=*}
			shift
			;;
		--*)
			[[ $VALUE_FLAGS == *" $flag "* ]] || die "unknown flag: $flag (see --help)"
			need_value "$flag" "$#"
			value=$2
			shift 2
			;;
		*) die "unexpected argument: $flag (see --help)" ;;
		esac
		case $flag in
		--project) PROJECT=$value ;;
		--region) REGION=$value ;;
		--name-prefix) NAME_PREFIX=$value ;;
		--http-function) HTTP_FUNCTION=$value ;;
		--pubsub-function) PUBSUB_FUNCTION=$value ;;
		--poll-function) POLL_FUNCTION=$value ;;
		--topic) TOPIC=$value ;;
		--scheduler-job) SCHEDULER_JOB=$value ;;
		--runtime-sa) RUNTIME_SA_NAME=$value ;;
		--scheduler-sa) SCHEDULER_SA_NAME=$value ;;
		--state-bucket) STATE_BUCKET=$value ;;
		--files-bucket) FILES_BUCKET=$value ;;
		--files-retention-days) FILES_RETENTION_DAYS=$value ;;
		--gcs-allowed-buckets) GCS_ALLOWED_BUCKETS=$value ;;
		--schedule) SCHEDULE=$value ;;
		--time-zone) TIME_ZONE=$value ;;
		--scheduler-region) SCHEDULER_REGION=$value ;;
		--poll-lookback-seconds) POLL_LOOKBACK=$value ;;
		--baseten-secret) BASETEN_SECRET=$value ;;
		--baseten-secret-version) BASETEN_SECRET_VERSION=$value ;;
		--webhook-url) WEBHOOK_URL=$value ;;
		--webhook-secret) WEBHOOK_SECRET=$value ;;
		--webhook-secret-version) WEBHOOK_SECRET_VERSION=$value ;;
		--api-keys-secret) API_KEYS_SECRET=$value ;;
		--api-keys-secret-version) API_KEYS_SECRET_VERSION=$value ;;
		--teams) TEAMS=$value ;;
		--admin-team) ADMIN_TEAM=$value ;;
		--team-limits) TEAM_LIMITS=$value ;;
		--env) EXTRA_ENV+=("$value") ;;
		--source) SOURCE_DIR=$value ;;
		--build-service-account) BUILD_SA=$value ;;
		--dry-run | --public | --teardown | --help) die "$flag takes no value" ;;
		*) die "unknown flag: $flag (see --help)" ;;
		esac
	done
}

# ---------------------------------------------------------------- checking --
check_re() {
	# $1 what, $2 value, $3 regex, $4 rule in words
	[[ $2 =~ $3 ]] || die "invalid $1 '$2': $4"
}

check_version() {
	[[ -z $2 || $2 =~ ^[1-9][0-9]*$ ]] ||
		die "invalid $1 '$2': a version number (versions are pinned; 'latest' is what this script resolves for you)"
}

# Seconds between two runs of a cron schedule, for the common shapes.
schedule_interval() {
	local -a f
	read -r -a f <<<"$1"
	[[ ${#f[@]} -eq 5 ]] || return 1
	local m=${f[0]} h=${f[1]} rest="${f[2]} ${f[3]} ${f[4]}"
	[[ $rest == '* * *' ]] || return 1
	if [[ $h == '*' ]]; then
		if [[ $m == '*' ]]; then
			echo 60
		elif [[ $m =~ ^\*/([0-9]+)$ ]]; then
			echo $((10#${BASH_REMATCH[1]} * 60))
		elif [[ $m =~ ^[0-9]+$ ]]; then
			echo 3600
		else
			return 1
		fi
	elif [[ $m =~ ^[0-9]+$ ]]; then
		if [[ $h =~ ^\*/([0-9]+)$ ]]; then
			echo $((10#${BASH_REMATCH[1]} * 3600))
		elif [[ $h =~ ^[0-9]+$ ]]; then
			echo 86400
		else
			return 1
		fi
	else
		return 1
	fi
}

validate() {
	[[ -n $PROJECT ]] || die "no project: pass --project PROJECT or set GOOGLE_CLOUD_PROJECT"
	[[ -n $REGION ]] || die "no region: pass --region REGION (e.g. us-central1) or set REGION"
	check_re project "$PROJECT" '^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$' \
		"6-30 lowercase letters, digits and hyphens"
	check_re region "$REGION" '^[a-z]+-[a-z]+[0-9]+$' "like us-central1"
	SCHEDULER_REGION=${SCHEDULER_REGION:-$REGION}
	check_re "scheduler region" "$SCHEDULER_REGION" '^[a-z]+-[a-z]+[0-9]+$' "like us-central1"
	[[ -z $NAME_PREFIX || $NAME_PREFIX =~ ^[a-z][-a-z0-9]*$ ]] ||
		die "invalid --name-prefix '$NAME_PREFIX': lowercase letters, digits and hyphens, starting with a letter"

	HTTP_FN=$NAME_PREFIX$HTTP_FUNCTION
	PUBSUB_FN=$NAME_PREFIX$PUBSUB_FUNCTION
	POLL_FN=$NAME_PREFIX$POLL_FUNCTION
	TOPIC_NAME=$NAME_PREFIX$TOPIC
	JOB_NAME=$NAME_PREFIX$SCHEDULER_JOB
	local fn_re='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' fn_rule="lowercase letters, digits and hyphens, at most 63, starting with a letter (it is also the Cloud Run service name)"
	check_re "function name" "$HTTP_FN" "$fn_re" "$fn_rule"
	check_re "function name" "$PUBSUB_FN" "$fn_re" "$fn_rule"
	check_re "function name" "$POLL_FN" "$fn_re" "$fn_rule"
	[[ $HTTP_FN != "$PUBSUB_FN" && $HTTP_FN != "$POLL_FN" && $PUBSUB_FN != "$POLL_FN" ]] ||
		die "the three function names must differ"
	check_re topic "$TOPIC_NAME" '^[A-Za-z][-A-Za-z0-9._~%+]{2,254}$' \
		"3-255 letters, digits or -._~%+, starting with a letter"
	[[ $TOPIC_NAME != goog* ]] || die "invalid topic '$TOPIC_NAME': may not start with 'goog'"
	check_re "scheduler job" "$JOB_NAME" '^[A-Za-z0-9_-]{1,500}$' "letters, digits, hyphens, underscores"

	local sa_re='^[a-z][-a-z0-9]{4,28}[a-z0-9]$' sa_rule="6-30 lowercase letters, digits and hyphens, starting with a letter"
	check_re "service account id" "$NAME_PREFIX$RUNTIME_SA_NAME" "$sa_re" "$sa_rule"
	check_re "service account id" "$NAME_PREFIX$SCHEDULER_SA_NAME" "$sa_re" "$sa_rule"
	RUNTIME_SA="$NAME_PREFIX$RUNTIME_SA_NAME@$PROJECT.iam.gserviceaccount.com"
	SCHEDULER_SA="$NAME_PREFIX$SCHEDULER_SA_NAME@$PROJECT.iam.gserviceaccount.com"
	if [[ $PROJECT == *:* ]]; then
		# Domain-scoped project "example.com:proj" -> proj.example.com.iam...
		RUNTIME_SA="$NAME_PREFIX$RUNTIME_SA_NAME@${PROJECT#*:}.${PROJECT%%:*}.iam.gserviceaccount.com"
		SCHEDULER_SA="$NAME_PREFIX$SCHEDULER_SA_NAME@${PROJECT#*:}.${PROJECT%%:*}.iam.gserviceaccount.com"
	fi
	[[ $RUNTIME_SA != "$SCHEDULER_SA" ]] || die "the runtime and scheduler service accounts must differ"

	# Bucket names are global: the project id (domain-scoped: its last part) makes it ours.
	BUCKET=${STATE_BUCKET:-$NAME_PREFIX${PROJECT#*:}-finetune-state}
	check_re "state bucket" "$BUCKET" '^[a-z0-9][-a-z0-9_]{1,61}[a-z0-9]$' \
		"3-63 lowercase letters, digits, hyphens and underscores (pass --state-bucket NAME)"
	[[ $BUCKET != goog* && $BUCKET != *google* ]] ||
		die "invalid state bucket '$BUCKET': may not start with 'goog' or contain 'google'"
	FILES=${FILES_BUCKET:-$NAME_PREFIX${PROJECT#*:}-finetune-files}
	check_re "files bucket" "$FILES" '^[a-z0-9][-a-z0-9_]{1,61}[a-z0-9]$' \
		"3-63 lowercase letters, digits, hyphens and underscores (pass --files-bucket NAME)"
	[[ $FILES != goog* && $FILES != *google* ]] ||
		die "invalid files bucket '$FILES': may not start with 'goog' or contain 'google'"
	# Its lifecycle rule would delete the poll's state with the old files.
	[[ $FILES != "$BUCKET" ]] || die "the files bucket and the state bucket must differ ('$FILES')"

	local secret_re='^[A-Za-z0-9_-]{1,255}$' secret_rule="letters, digits, hyphens and underscores"
	check_re "Baseten secret name" "$BASETEN_SECRET" "$secret_re" "$secret_rule"
	check_version "--baseten-secret-version" "$BASETEN_SECRET_VERSION"
	if [[ -n $WEBHOOK_SECRET ]]; then
		check_re "webhook secret name" "$WEBHOOK_SECRET" "$secret_re" "$secret_rule"
	fi
	check_version "--webhook-secret-version" "$WEBHOOK_SECRET_VERSION"
	if [[ -n $API_KEYS_SECRET ]]; then
		check_re "API keys secret name" "$API_KEYS_SECRET" "$secret_re" "$secret_rule"
	fi
	check_version "--api-keys-secret-version" "$API_KEYS_SECRET_VERSION"

	if [[ $TEARDOWN -eq 1 ]]; then
		return 0
	fi

	if [[ -n $WEBHOOK_URL ]]; then
		check_re "--webhook-url" "$WEBHOOK_URL" '^https://[^[:space:]]+$' "an https:// URL without spaces"
		[[ -n $WEBHOOK_SECRET ]] ||
			die "--webhook-url needs --webhook-secret NAME (the Secret Manager secret holding the whsec_... signing secret)"
	elif [[ -n $WEBHOOK_SECRET ]]; then
		die "--webhook-secret is only used with --webhook-url URL"
	fi
	if [[ -n $FILES_RETENTION_DAYS ]]; then
		check_re "--files-retention-days" "$FILES_RETENTION_DAYS" '^[1-9][0-9]{0,3}$' \
			"a number of days from 1 to 3650"
		[[ $FILES_RETENTION_DAYS -le 3650 ]] ||
			die "invalid --files-retention-days '$FILES_RETENTION_DAYS': a number of days from 1 to 3650"
	fi
	if [[ -n $GCS_ALLOWED_BUCKETS ]]; then
		local allowed
		local -a allowed_list
		IFS=',' read -r -a allowed_list <<<"$GCS_ALLOWED_BUCKETS"
		for allowed in "${allowed_list[@]}"; do
			check_re "--gcs-allowed-buckets entry" "$allowed" '^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$' \
				"a comma list of bucket names (lowercase letters, digits, - _ .)"
			[[ $allowed != "$BUCKET" && $allowed != "$FILES" ]] ||
				die "--gcs-allowed-buckets may not name the service's own bucket '$allowed': callers would read the poll state, other people's files or the job index with the service's identity"
		done
	fi
	if [[ $PUBLIC -eq 1 && -z $API_KEYS_SECRET ]]; then
		die "--public makes train_http callable by anyone on the internet; it is refused unless --api-keys-secret NAME is given so every call needs an X-Api-Key"
	fi

	local -a fields
	read -r -a fields <<<"$SCHEDULE"
	[[ ${#fields[@]} -eq 5 && $SCHEDULE =~ ^[-0-9A-Za-z*/,?#L\ ]+$ ]] ||
		die "invalid --schedule '$SCHEDULE': five cron fields expected, e.g. '*/5 * * * *'"
	local interval
	if [[ -n $POLL_LOOKBACK ]]; then
		check_re "--poll-lookback-seconds" "$POLL_LOOKBACK" '^[1-9][0-9]{0,6}$' "a positive number of seconds"
		interval=$(schedule_interval "$SCHEDULE") || true
	else
		interval=$(schedule_interval "$SCHEDULE") ||
			die "cannot tell the interval of --schedule '$SCHEDULE'; pass --poll-lookback-seconds N (at least twice the interval)"
		POLL_LOOKBACK=$((interval * 2))
		if [[ $POLL_LOOKBACK -lt 600 ]]; then POLL_LOOKBACK=600; fi
	fi
	check_re "--time-zone" "$TIME_ZONE" '^[A-Za-z0-9_+/-]+$' "an IANA time zone like Etc/UTC or Europe/Paris"

	local team_re='^[a-z][a-z0-9-]{0,31}$' team_rule="1-32 of a-z 0-9 -, starting with a letter"
	local team
	if [[ -n $TEAMS ]]; then
		IFS=, read -r -a team_list <<<"$TEAMS"
		for team in "${team_list[@]}"; do check_re "--teams entry" "$team" "$team_re" "$team_rule"; done
	fi
	if [[ -n $ADMIN_TEAM ]]; then
		check_re "--admin-team" "$ADMIN_TEAM" "$team_re" "$team_rule"
		[[ -n $TEAMS && ",$TEAMS," == *",$ADMIN_TEAM,"* ]] || die "--admin-team $ADMIN_TEAM must be one of --teams"
	fi
	if [[ -n $TEAM_LIMITS ]]; then
		# The service checks it fully at start; here: one JSON object, no line breaks.
		check_re "--team-limits" "$TEAM_LIMITS" '^\{[][{}":,0-9a-z* _-]*\}$' 'a JSON object like {"*": {"max_active_gpus": 8}}'
	fi

	local kv key
	for kv in "${EXTRA_ENV[@]}"; do
		[[ $kv == *=* ]] || die "invalid --env '$kv': KEY=VALUE expected"
		key=${kv%%=*}
		check_re "--env key" "$key" '^[A-Z_][A-Z0-9_]*$' "upper-case letters, digits and underscores"
		case $key in
		GOOGLE_CLOUD_PROJECT | WEBHOOK_URL | POLL_LOOKBACK_SECONDS | THREADS | POLL_STATE_BUCKET | TEAMS | ADMIN_TEAM | TEAM_LIMITS)
			die "--env $key: set by this script (use its own flag)" ;;
		FILES_BUCKET | FILES_RETENTION_DAYS)
			die "--env $key: set by this script (use --files-bucket / --files-retention-days: the bucket's lifecycle rule must match)" ;;
		GCS_ALLOWED_BUCKETS)
			die "--env $key: set by this script (use --gcs-allowed-buckets: it refuses the service's own buckets)" ;;
		BASETEN_API_KEY* | WEBHOOK_SECRET* | API_KEYS*)
			die "--env $key: secrets go through Secret Manager (--baseten-secret, --webhook-secret, --api-keys-secret), never plain env vars" ;;
		PORT | K_SERVICE | K_REVISION | K_CONFIGURATION | FUNCTION_TARGET | FUNCTION_SIGNATURE_TYPE)
			die "--env $key: reserved by Cloud Run" ;;
		esac
	done

	[[ -d $SOURCE_DIR ]] || die "--source '$SOURCE_DIR' is not a directory"
	[[ -f $SOURCE_DIR/main.py ]] || die "--source '$SOURCE_DIR' has no main.py"
	if [[ ! -f $SOURCE_DIR/.gcloudignore ]]; then
		info "warning: $SOURCE_DIR has no .gcloudignore: gcloud would upload the whole folder"
	fi
}

# ----------------------------------------------------------------- running --
# Every gcloud call goes through these; no value is ever evaluated as code.
# Dry-run output goes to fd 3 (the real stdout) so it survives $(...).
exec 3>&1

print_cmd() {
	local line
	printf -v line '%q ' "$@"
	printf '%s\n' "${line% }"
}

# A call that changes something: printed in dry-run, run (and echoed) otherwise.
mutate() {
	if [[ $DRY_RUN -eq 1 ]]; then
		print_cmd gcloud "$@" "--project=$PROJECT" --quiet >&3
		return 0
	fi
	info "+ $(print_cmd gcloud "$@" "--project=$PROJECT" --quiet)"
	gcloud "$@" "--project=$PROJECT" --quiet
}

# The same, retried: IAM needs a moment to see a service account just created.
mutate_retry() {
	local attempt
	for attempt in 1 2 3 4 5; do
		if mutate "$@"; then return 0; fi
		if [[ $attempt -lt 5 ]]; then
			info "  retrying in $((RETRY_DELAY * attempt))s (IAM changes take a moment to propagate)"
			sleep "$((RETRY_DELAY * attempt))"
		fi
	done
	die "gave up after 5 attempts: gcloud $*"
}

# Files gcloud reads (the lifecycle rule) are written to a private temporary
# folder, removed when the script exits (after an error or Ctrl-C too).
WORK_DIR=
cleanup() {
	if [[ -n $WORK_DIR ]]; then rm -rf -- "$WORK_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# write_work_file NAME TEXT: WORK_FILE = the path of a new file NAME holding TEXT.
# Not written in dry-run (it would be gone when the commands are run): NAME
# stands for it and TEXT is printed as a comment.
WORK_FILE=
write_work_file() {
	if [[ $DRY_RUN -eq 1 ]]; then
		WORK_FILE=$1
		printf '# not written in dry-run: %s holding %s\n' "$1" "$2" >&3
		return 0
	fi
	if [[ -z $WORK_DIR ]]; then
		WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/finetune-deploy.XXXXXXXX") ||
			die "cannot create a temporary folder (TMPDIR=${TMPDIR:-/tmp})"
	fi
	WORK_FILE=$WORK_DIR/$1
	printf '%s\n' "$2" >"$WORK_FILE"
}

# In dry-run, lookups are not run: a deploy assumes nothing exists yet, a
# teardown that everything does (so both print every command they could run).
DRY_ASSUME_EXISTS=0

# A read-only call: its stdout is the result; a failing lookup means "missing"
# to the caller. In dry-run it is printed as a comment and answers as above.
lookup() {
	if [[ $DRY_RUN -eq 1 ]]; then
		local assumed=missing
		if [[ $DRY_ASSUME_EXISTS -eq 1 ]]; then assumed=present; fi
		printf '# lookup (not run in dry-run, assumed %s): %s\n' "$assumed" \
			"$(print_cmd gcloud "$@" "--project=$PROJECT")" >&3
		[[ $DRY_ASSUME_EXISTS -eq 1 ]]
		return
	fi
	gcloud "$@" "--project=$PROJECT" 2>/dev/null
}

exists() { lookup "$@" >/dev/null; }

# has_binding ROLE MEMBER -- LOOKUP_ARGS...: the resource's IAM policy holds it.
has_binding() {
	local role=$1 member=$2 policy
	shift 3
	policy=$(lookup "$@" "--flatten=bindings[].members" \
		"--format=csv[no-heading](bindings.role,bindings.members)") || return 1
	if [[ $DRY_RUN -eq 1 ]]; then return 0; fi # assumed present
	contains_line "$role,$member" "$policy"
}

# ---------------------------------------------------------------- resources --
# contains_line LINE TEXT: TEXT has LINE as one of its lines.
contains_line() {
	local line
	while IFS= read -r line; do
		[[ $line == "$1" ]] && return 0
	done <<<"$2"
	return 1
}

enable_apis() {
	local enabled api missing=()
	enabled=$(lookup services list --enabled "--format=value(config.name)") || enabled=
	for api in "${APIS[@]}"; do
		if ! contains_line "$api" "$enabled"; then missing+=("$api"); fi
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		mutate services enable "${missing[@]}"
	else
		info "= APIs already enabled"
	fi
}

ensure_service_account() {
	local id=$1 email=$2 display=$3
	if exists iam service-accounts describe "$email"; then
		info "= service account $email exists"
	else
		mutate iam service-accounts create "$id" "--display-name=$display"
	fi
}

ensure_topic() {
	if exists pubsub topics describe "$TOPIC_NAME"; then
		info "= topic $TOPIC_NAME exists"
	else
		mutate pubsub topics create "$TOPIC_NAME"
	fi
}

# resolve_version SECRET PINNED -> prints the version number to use.
resolve_version() {
	local secret=$1 pinned=$2 version
	if [[ -n $pinned ]]; then
		printf '%s\n' "$pinned"
		return 0
	fi
	if [[ $DRY_RUN -eq 1 ]]; then
		lookup secrets versions list "$secret" "--filter=state=ENABLED" \
			"--sort-by=~createTime" --limit=1 "--format=value(name.basename())" || true
		printf '%s\n' DRY_RUN_LATEST_VERSION
		return 0
	fi
	exists secrets describe "$secret" ||
		die "secret '$secret' not found in project $PROJECT (or not readable by you); create it first, e.g.: printf %s \"\$KEY\" | gcloud secrets create $secret --project=$PROJECT --replication-policy=automatic --data-file=-"
	version=$(lookup secrets versions list "$secret" "--filter=state=ENABLED" \
		"--sort-by=~createTime" --limit=1 "--format=value(name.basename())") || version=
	version=${version##*/}
	[[ $version =~ ^[1-9][0-9]*$ ]] ||
		die "secret '$secret' has no enabled version; add one: printf %s \"\$VALUE\" | gcloud secrets versions add $secret --project=$PROJECT --data-file=-"
	printf '%s\n' "$version"
}

# check_public_api_keys: with --public, the API keys are all that guards GPU spend.
# The functions fail closed on a blank key list (500 on every route), but a
# deploy that can only fail is refused up front. The version is pinned here so
# the deploy uses exactly the version that was checked. The value is never printed.
check_public_api_keys() {
	local secret=$API_KEYS_SECRET version value
	version=$(resolve_version "$secret" "$API_KEYS_SECRET_VERSION")
	API_KEYS_SECRET_VERSION=$version
	if [[ $DRY_RUN -eq 1 ]]; then
		printf '# not checked in dry-run: secret %s holds at least one API key\n' "$secret" >&3
		return 0
	fi
	if ! value=$(gcloud secrets versions access "$version" "--secret=$secret" "--project=$PROJECT" 2>/dev/null); then
		info "warning: could not read secret '$secret' version $version (reading it needs roles/secretmanager.secretAccessor), so --public cannot check that it holds an API key. train_http fails closed: with no key in it, every call but /healthz answers 500."
		return 0
	fi
	if [[ -z ${value//[[:space:],]/} ]]; then
		value=
		die "secret '$secret' version $version holds no API key (it is empty, blank or only commas); --public refuses it, since train_http would refuse every call. Add a version with the keys: printf %s \"\$KEYS\" | gcloud secrets versions add $secret --project=$PROJECT --data-file=-"
	fi
	value=
	info "= secret '$secret' version $version holds API keys"
}

grant_secret_access() {
	local secret=$1 member="serviceAccount:$RUNTIME_SA" role=roles/secretmanager.secretAccessor
	if has_binding "$role" "$member" -- secrets get-iam-policy "$secret"; then
		info "= $RUNTIME_SA can already read secret $secret"
	else
		mutate_retry secrets add-iam-policy-binding "$secret" "--member=$member" "--role=$role"
	fi
}

# grant_invoker FUNCTION SERVICE_ACCOUNT: run.invoker on that function only.
grant_invoker() {
	local fn=$1 member="serviceAccount:$2"
	# A gen2 function's Cloud Run service has the function's name.
	if has_binding roles/run.invoker "$member" -- run services get-iam-policy "$fn" "--region=$REGION"; then
		info "= $2 may already invoke $fn"
	else
		mutate_retry functions add-invoker-policy-binding "$fn" "--region=$REGION" "--member=$member"
	fi
}

# The poll's state: one object in a private bucket of its own, in the region.
ensure_state_bucket() {
	local settings
	if settings=$(lookup storage buckets describe "gs://$BUCKET" \
		"--format=value(uniform_bucket_level_access,public_access_prevention)"); then
		if [[ $DRY_RUN -eq 1 || $settings == $'True\tenforced' ]]; then
			info "= bucket gs://$BUCKET exists (uniform access, public access prevented)"
		else
			mutate storage buckets update "gs://$BUCKET" --uniform-bucket-level-access \
				--public-access-prevention
		fi
	else
		mutate storage buckets create "gs://$BUCKET" "--location=$REGION" \
			--uniform-bucket-level-access --public-access-prevention
	fi
}

# Users' uploaded training files (FILES_BUCKET): a private bucket of its own in
# the region, whose lifecycle rule deletes every object (a File's bytes and its
# record) FILES_RETENTION_DAYS after it was written. An existing bucket is
# brought to these settings; its lifecycle is replaced by this one rule.
ensure_files_bucket() {
	local days=${FILES_RETENTION_DAYS:-30} settings want lifecycle
	printf -v lifecycle '{"rule":[{"action":{"type":"Delete"},"condition":{"age":%s}}]}' "$days"
	# uniform access, public access prevention, number of rules, the rule's
	# action, its age and how many conditions it has.
	printf -v want '%s\t%s\t%s\t%s\t%s\t%s' True enforced 1 Delete "$days" 1
	if settings=$(lookup storage buckets describe "gs://$FILES" \
		"--format=value(uniform_bucket_level_access,public_access_prevention,lifecycle_config.rule.len(),lifecycle_config.rule[0].action.type,lifecycle_config.rule[0].condition.age,lifecycle_config.rule[0].condition.len())"); then
		if [[ $DRY_RUN -eq 1 || $settings == "$want" ]]; then
			info "= bucket gs://$FILES exists (uniform access, public access prevented, objects deleted after $days days)"
		else
			write_work_file lifecycle.json "$lifecycle"
			mutate storage buckets update "gs://$FILES" --uniform-bucket-level-access \
				--public-access-prevention "--lifecycle-file=$WORK_FILE"
		fi
	else
		write_work_file lifecycle.json "$lifecycle"
		mutate storage buckets create "gs://$FILES" "--location=$REGION" \
			--uniform-bucket-level-access --public-access-prevention "--lifecycle-file=$WORK_FILE"
	fi
}

# grant_bucket_access BUCKET: object access (read, write, delete, list) on that
# bucket only, never project-wide.
grant_bucket_access() {
	local bucket=$1 member="serviceAccount:$RUNTIME_SA" role=roles/storage.objectUser
	if has_binding "$role" "$member" -- storage buckets get-iam-policy "gs://$bucket"; then
		info "= $RUNTIME_SA can already use objects in gs://$bucket"
	else
		mutate_retry storage buckets add-iam-policy-binding "gs://$bucket" "--member=$member" \
			"--role=$role"
	fi
}

# The runtime account signs the short-lived V4 URL that hands a training job its
# data through IAM signBlob, so no key file ever exists: Token Creator on
# itself, and on no other account.
grant_self_signing() {
	local member="serviceAccount:$RUNTIME_SA" role=roles/iam.serviceAccountTokenCreator
	if has_binding "$role" "$member" -- iam service-accounts get-iam-policy "$RUNTIME_SA"; then
		info "= $RUNTIME_SA may already sign as itself"
	else
		mutate_retry iam service-accounts add-iam-policy-binding "$RUNTIME_SA" "--member=$member" \
			"--role=$role"
	fi
}

# join_env KEY=VALUE... -> one --set-env-vars value, with an alternate
# delimiter (gcloud topic escaping) when a value holds a comma.
join_env() {
	local delim kv out
	for delim in ',' ';' '|' '@' '~'; do
		out=
		for kv in "$@"; do
			if [[ $kv == *"$delim"* ]]; then continue 2; fi
			out+="${out:+$delim}$kv"
		done
		if [[ $delim == , ]]; then printf '%s\n' "$out"; else printf '^%s^%s\n' "$delim" "$out"; fi
		return 0
	done
	die "cannot pass these env vars: every delimiter appears in a value"
}

function_url() {
	lookup functions describe "$1" --gen2 "--region=$REGION" "--format=value(serviceConfig.uri)"
}

# deploy_function NAME ENTRY_POINT MEMORY CPU CONCURRENCY TIMEOUT MAX_INSTANCES
#                 SECRETS ENV -- TRIGGER_FLAGS...
deploy_function() {
	local name=$1 entry=$2 memory=$3 cpu=$4 concurrency=$5 timeout=$6 max=$7 secrets=$8 env=$9
	shift 10
	local -a args=(
		functions deploy "$name" --gen2 "--runtime=$RUNTIME" "--region=$REGION"
		"--source=$SOURCE_DIR" "--entry-point=$entry" "$@"
		"--service-account=$RUNTIME_SA"
		"--set-secrets=$secrets" "--set-env-vars=$env"
		"--memory=$memory" "--cpu=$cpu" "--concurrency=$concurrency"
		"--timeout=$timeout" "--max-instances=$max"
	)
	if [[ -n $BUILD_SA ]]; then args+=("--build-service-account=$BUILD_SA"); fi
	mutate "${args[@]}"
}

ensure_scheduler_job() {
	local url=$1 verb=create
	if exists scheduler jobs describe "$JOB_NAME" "--location=$SCHEDULER_REGION"; then
		verb=update
	fi
	mutate scheduler jobs "$verb" http "$JOB_NAME" "--location=$SCHEDULER_REGION" \
		"--schedule=$SCHEDULE" "--time-zone=$TIME_ZONE" "--uri=$url" --http-method=POST \
		"--attempt-deadline=$SCHEDULER_ATTEMPT_DEADLINE" \
		"--oidc-service-account-email=$SCHEDULER_SA" "--oidc-token-audience=$url" \
		"--description=Polls Baseten training jobs via $POLL_FN"
}

# ------------------------------------------------------------------- deploy --
deploy() {
	info "Deploying to project $PROJECT, region $REGION"
	if [[ $PUBLIC -eq 1 ]]; then check_public_api_keys; fi
	enable_apis
	ensure_service_account "$NAME_PREFIX$RUNTIME_SA_NAME" "$RUNTIME_SA" "Baseten training functions (runtime)"
	ensure_service_account "$NAME_PREFIX$SCHEDULER_SA_NAME" "$SCHEDULER_SA" "Cloud Scheduler caller of $POLL_FN"
	ensure_topic
	ensure_state_bucket
	grant_bucket_access "$BUCKET"
	ensure_files_bucket
	grant_bucket_access "$FILES"
	grant_self_signing

	# Secrets: pin versions now, so a new version only takes effect on redeploy.
	local v_baseten v_webhook='' v_api_keys=''
	v_baseten=$(resolve_version "$BASETEN_SECRET" "$BASETEN_SECRET_VERSION")
	grant_secret_access "$BASETEN_SECRET"
	local common_secrets="BASETEN_API_KEY=$BASETEN_SECRET:$v_baseten"
	if [[ -n $WEBHOOK_SECRET ]]; then
		v_webhook=$(resolve_version "$WEBHOOK_SECRET" "$WEBHOOK_SECRET_VERSION")
		grant_secret_access "$WEBHOOK_SECRET"
		common_secrets+=",WEBHOOK_SECRET=$WEBHOOK_SECRET:$v_webhook"
	fi
	local http_secrets=$common_secrets
	if [[ -n $API_KEYS_SECRET ]]; then
		v_api_keys=$(resolve_version "$API_KEYS_SECRET" "$API_KEYS_SECRET_VERSION")
		grant_secret_access "$API_KEYS_SECRET"
		http_secrets+=",API_KEYS=$API_KEYS_SECRET:$v_api_keys"
	fi

	local -a env=("GOOGLE_CLOUD_PROJECT=$PROJECT")
	if [[ -n $WEBHOOK_URL ]]; then env+=("WEBHOOK_URL=$WEBHOOK_URL"); fi
	# Teams: every function knows them (events say whose; limits hold for retries too).
	if [[ -n $TEAMS ]]; then env+=("TEAMS=$TEAMS"); fi
	if [[ -n $ADMIN_TEAM ]]; then env+=("ADMIN_TEAM=$ADMIN_TEAM"); fi
	if [[ -n $TEAM_LIMITS ]]; then env+=("TEAM_LIMITS=$TEAM_LIMITS"); fi
	env+=("${EXTRA_ENV[@]}")
	# Both submit paths resolve training_file (a File id or gs:// object), so
	# both need the bucket; poll_jobs never reads a file.
	local -a files_env=("FILES_BUCKET=$FILES")
	if [[ -n $FILES_RETENTION_DAYS ]]; then files_env+=("FILES_RETENTION_DAYS=$FILES_RETENTION_DAYS"); fi
	if [[ -n $GCS_ALLOWED_BUCKETS ]]; then files_env+=("GCS_ALLOWED_BUCKETS=$GCS_ALLOWED_BUCKETS"); fi

	deploy_function "$PUBSUB_FN" train_pubsub "$PUBSUB_MEMORY" "$PUBSUB_CPU" "$PUBSUB_CONCURRENCY" \
		"$PUBSUB_TIMEOUT" "$PUBSUB_MAX_INSTANCES" "$common_secrets" \
		"$(join_env "${env[@]}" "${files_env[@]}" "THREADS=$PUBSUB_CONCURRENCY")" -- \
		"--trigger-topic=$TOPIC_NAME" --retry "--trigger-service-account=$RUNTIME_SA"

	local access=--no-allow-unauthenticated
	if [[ $PUBLIC -eq 1 ]]; then access=--allow-unauthenticated; fi
	deploy_function "$HTTP_FN" train_http "$HTTP_MEMORY" "$HTTP_CPU" "$HTTP_CONCURRENCY" \
		"$HTTP_TIMEOUT" "$HTTP_MAX_INSTANCES" "$http_secrets" \
		"$(join_env "${env[@]}" "${files_env[@]}" "THREADS=$HTTP_CONCURRENCY")" -- \
		--trigger-http "$access"
	# CPU always allocated on train_http's Cloud Run service: a file check that
	# outlasts its request (complete answered 202 "validating") runs on after the
	# answer, which request-based billing would throttle to a crawl. functions
	# deploy has no flag for it, and may reset it, so it is set after every deploy.
	mutate run services update "$HTTP_FN" "--region=$REGION" --no-cpu-throttling

	deploy_function "$POLL_FN" poll_jobs "$POLL_MEMORY" "$POLL_CPU" "$POLL_CONCURRENCY" \
		"$POLL_TIMEOUT" "$POLL_MAX_INSTANCES" "$common_secrets" \
		"$(join_env "${env[@]}" "POLL_LOOKBACK_SECONDS=$POLL_LOOKBACK" "POLL_STATE_BUCKET=$BUCKET" \
			"THREADS=$POLL_CONCURRENCY")" -- \
		--trigger-http --no-allow-unauthenticated

	# Who may call what: the Pub/Sub trigger (runtime SA) -> train_pubsub only;
	# the scheduler SA -> poll_jobs only. Never project-wide.
	grant_invoker "$PUBSUB_FN" "$RUNTIME_SA"
	grant_invoker "$POLL_FN" "$SCHEDULER_SA"

	local poll_url http_url
	poll_url=$(function_url "$POLL_FN") || poll_url=
	if [[ -z $poll_url ]]; then
		[[ $DRY_RUN -eq 1 ]] || die "could not read the URL of $POLL_FN (gcloud functions describe failed)"
		poll_url="https://$POLL_FN-DRY-RUN-PLACEHOLDER.a.run.app"
	fi
	ensure_scheduler_job "$poll_url"

	http_url=$(function_url "$HTTP_FN") || http_url=
	[[ -n $http_url ]] || http_url="https://$HTTP_FN-DRY-RUN-PLACEHOLDER.a.run.app"
	print_usage "$http_url" "$poll_url" "$v_baseten" "$v_webhook" "$v_api_keys"
}

print_usage() {
	local http_url=$1 poll_url=$2 key_header='' done=Done.
	# shellcheck disable=SC2016 # printed for the user's shell to expand
	if [[ -n $API_KEYS_SECRET ]]; then key_header=' -H "X-Api-Key: $API_KEY"'; fi
	if [[ $DRY_RUN -eq 1 ]]; then done='Dry run: nothing was changed.'; fi
	emit >&2 <<EOF

$done
Secrets pinned: $BASETEN_SECRET:$3${4:+, $WEBHOOK_SECRET:$4}${5:+, $API_KEYS_SECRET:$5}
(after adding a secret version, run this script again to use it)

train_http ($HTTP_FN): $http_url
  TOKEN=\$(gcloud auth print-identity-token)
  curl -H "Authorization: Bearer \$TOKEN"$key_header $http_url/healthz
  curl -X POST -H "Authorization: Bearer \$TOKEN"$key_header -H 'Content-Type: application/json' \\
       -H 'Idempotency-Key: my-first-job' \\
       -d '{"dataset_id": "OWNER/DATASET", "model_id": "OWNER/MODEL"}' $http_url/jobs
  curl -H "Authorization: Bearer \$TOKEN"$key_header $http_url/jobs

train_pubsub ($PUBSUB_FN), topic $TOPIC_NAME:
  gcloud pubsub topics publish $TOPIC_NAME --project=$PROJECT \\
       --message='{"dataset_id": "OWNER/DATASET", "model_id": "OWNER/MODEL"}' \\
       --attribute=idempotency_key=my-first-job

poll_jobs ($POLL_FN): $poll_url  (runs "$SCHEDULE" via job $JOB_NAME)
  gcloud scheduler jobs run $JOB_NAME --location=$SCHEDULER_REGION --project=$PROJECT
  curl -X POST -H "Authorization: Bearer \$TOKEN" $poll_url

Other callers need roles/run.invoker on the one function they call:
  gcloud functions add-invoker-policy-binding $HTTP_FN --region=$REGION --project=$PROJECT --member=user:SOMEONE@EXAMPLE.COM

Uploaded files live in gs://$FILES (deleted ${FILES_RETENTION_DAYS:-30} days after upload). To train on
gs:// objects of another bucket, let the runtime account read that bucket:
  gcloud storage buckets add-iam-policy-binding gs://BUCKET --member=serviceAccount:$RUNTIME_SA --role=roles/storage.objectViewer
EOF
}

# ----------------------------------------------------------------- teardown --
teardown() {
	info "Tearing down from project $PROJECT, region $REGION"
	DRY_ASSUME_EXISTS=1
	if exists scheduler jobs describe "$JOB_NAME" "--location=$SCHEDULER_REGION"; then
		mutate scheduler jobs delete "$JOB_NAME" "--location=$SCHEDULER_REGION"
	fi
	local fn
	for fn in "$POLL_FN" "$HTTP_FN" "$PUBSUB_FN"; do
		if exists functions describe "$fn" --gen2 "--region=$REGION"; then
			mutate functions delete "$fn" --gen2 "--region=$REGION"
		fi
	done
	if exists pubsub topics describe "$TOPIC_NAME"; then
		mutate pubsub topics delete "$TOPIC_NAME"
	fi
	local secret member="serviceAccount:$RUNTIME_SA" role=roles/secretmanager.secretAccessor
	for secret in "$BASETEN_SECRET" "$WEBHOOK_SECRET" "$API_KEYS_SECRET"; do
		[[ -n $secret ]] || continue
		if has_binding "$role" "$member" -- secrets get-iam-policy "$secret"; then
			mutate secrets remove-iam-policy-binding "$secret" "--member=$member" "--role=$role"
		fi
	done
	# The bucket goes with its one object (and its IAM policy).
	if exists storage buckets describe "gs://$BUCKET"; then
		mutate storage rm --recursive "gs://$BUCKET"
	fi
	# Users' uploaded training files go with theirs, for good.
	if exists storage buckets describe "gs://$FILES"; then
		info "warning: gs://$FILES holds the training files users uploaded (and their records): removing the bucket deletes every one of them for good"
		mutate storage rm --recursive "gs://$FILES"
	fi
	local email
	for email in "$SCHEDULER_SA" "$RUNTIME_SA"; do
		if exists iam service-accounts describe "$email"; then
			mutate iam service-accounts delete "$email"
		fi
	done
	if [[ $DRY_RUN -eq 1 ]]; then info "Dry run: nothing was changed."; fi
	info "Done. Kept: the secrets (delete with: gcloud secrets delete NAME --project=$PROJECT) and the enabled APIs."
}

main() {
	parse_args "$@"
	validate
	if [[ $DRY_RUN -ne 1 ]]; then
		command -v gcloud >/dev/null 2>&1 ||
			die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
	fi
	if [[ $TEARDOWN -eq 1 ]]; then
		teardown
	else
		deploy
	fi
}

main "$@"
