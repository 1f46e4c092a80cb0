# shellcheck shell=bash
# Shared by the tpu_scripts/*.sh (sourced, not run). Common options, from flags or the
# environment (flags win):
#   --name NAME       TPU_NAME         TPU VM (node) name
#   --zone ZONE       TPU_ZONE         e.g. us-east5-a
#   --project ID      TPU_PROJECT      defaults to gcloud's configured project
#   --type TYPE       TPU_TYPE         accelerator type, e.g. v5p-64, v6e-8 (create only)
#   --remote_dir DIR  TPU_REMOTE_DIR   the code's folder on every worker (default o3video_jax,
#                                      relative to the worker's home)
#   --venv DIR        TPU_VENV         the Python environment on every worker (default
#                                      o3video_venv, relative to the worker's home)
#   --slices N        TPU_SLICES       multislice: N slices, the nodes NAME-0 ... NAME-(N-1) of
#                                      the queued resource NAME-qr (create_tpu_vm.sh --slices N);
#                                      default 1: the one node NAME
#   --iap                              ssh/scp through Identity-Aware Proxy (no external IPs)
#   --dry_run                          print the exact gcloud commands instead of running them
#   -h, --help                         this script's usage
# The older positional form `SCRIPT NAME ZONE [...]` still works: leading words that are not
# options fill NAME, ZONE (and, for create_tpu_vm.sh, TYPE and RUNTIME) in that order.
# Every gcloud call goes through `gcloud_run`, so --dry_run shows exactly what would run.

set -euo pipefail

TPU_NAME=${TPU_NAME:-}
TPU_ZONE=${TPU_ZONE:-}
TPU_PROJECT=${TPU_PROJECT:-}
TPU_TYPE=${TPU_TYPE:-}
TPU_REMOTE_DIR=${TPU_REMOTE_DIR:-o3video_jax}
TPU_VENV=${TPU_VENV:-o3video_venv}
TPU_SLICES=${TPU_SLICES:-1}
DRY_RUN=0
IAP=0
# shellcheck disable=SC2034  # used by setup_workers.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

usage() {  # prints the script's header comment (the lines after the shebang)
  awk 'NR > 1 { if ($0 !~ /^#/ || $0 ~ /^# shellcheck/) exit; sub(/^# ?/, ""); print }' "$0"
  exit "${1:-0}"
}

# sq WORD: WORD quoted for a POSIX shell (single quotes; plain words stay as they are).
sq() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# parse_common "$@": consumes the common options; whatever else is left lands in ARGS.
# Leading positional words land in POSITIONAL (see take_positional).
parse_common() {
  ARGS=()
  POSITIONAL=()
  while [ $# -gt 0 ] && [[ "$1" != -* ]]; do
    POSITIONAL+=("$1")
    shift
  done
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) TPU_NAME=${2:?--name needs a value}; shift 2 ;;
      --zone) TPU_ZONE=${2:?--zone needs a value}; shift 2 ;;
      --project) TPU_PROJECT=${2:?--project needs a value}; shift 2 ;;
      --type) TPU_TYPE=${2:?--type needs a value}; shift 2 ;;
      --remote_dir) TPU_REMOTE_DIR=${2:?--remote_dir needs a value}; shift 2 ;;
      --venv) TPU_VENV=${2:?--venv needs a value}; shift 2 ;;
      --slices) TPU_SLICES=${2:?--slices needs a count}; shift 2 ;;
      --name=*) TPU_NAME=${1#*=}; shift ;;
      --zone=*) TPU_ZONE=${1#*=}; shift ;;
      --project=*) TPU_PROJECT=${1#*=}; shift ;;
      --type=*) TPU_TYPE=${1#*=}; shift ;;
      --remote_dir=*) TPU_REMOTE_DIR=${1#*=}; shift ;;
      --venv=*) TPU_VENV=${1#*=}; shift ;;
      --slices=*) TPU_SLICES=${1#*=}; shift ;;
      --iap) IAP=1; shift ;;
      --dry_run) DRY_RUN=1; shift ;;
      -h | --help) usage 0 ;;
      --) ARGS+=("$@"); break ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  if ! [[ "$TPU_SLICES" =~ ^[1-9][0-9]{0,2}$ ]]; then
    die "--slices (TPU_SLICES) needs a count >= 1, got '$TPU_SLICES'"
  fi
}

# take_positional VAR...: the leading positional words, in order, into these variables.
take_positional() {
  local i=0 var
  for var in "$@"; do
    if [ "$i" -lt "${#POSITIONAL[@]}" ]; then printf -v "$var" '%s' "${POSITIONAL[$i]}"; fi
    i=$((i + 1))
  done
  if [ "${#POSITIONAL[@]}" -gt "$#" ]; then
    die "unexpected argument '${POSITIONAL[$#]}' (see --help)"
  fi
}

require_name_zone() {
  [ -n "$TPU_NAME" ] || die "no TPU name: pass --name NAME or set TPU_NAME"
  [ -n "$TPU_ZONE" ] || die "no zone: pass --zone ZONE or set TPU_ZONE"
}

# Flags every gcloud call carries.
gcloud_flags() {
  GFLAGS=(--zone="$TPU_ZONE")
  if [ -n "$TPU_PROJECT" ]; then GFLAGS+=(--project="$TPU_PROJECT"); fi
}

gcloud_run() {
  if [ "$DRY_RUN" = 1 ]; then
    local word line=gcloud
    for word in "$@"; do line+=" $(sq "$word")"; done
    printf '%s\n' "$line"
  else
    gcloud "$@"
  fi
}

# ssh_workers WORKER COMMAND: runs COMMAND (a bash command line) on WORKER ("all" or an index).
ssh_workers() {
  local worker=$1 command=$2
  gcloud_flags
  local extra=()
  if [ "$IAP" = 1 ]; then extra+=(--tunnel-through-iap); fi
  gcloud_run compute tpus tpu-vm ssh "$TPU_NAME" "${GFLAGS[@]}" --worker="$worker" \
    "${extra[@]+"${extra[@]}"}" --command="$command"
}

# slice_node NAME I: the node of slice I: NAME itself with one slice, else NAME-I (the nodes of
# a queued resource made with --node-count N --node-prefix NAME).
slice_node() {
  if [ "$TPU_SLICES" = 1 ]; then printf '%s' "$1"; else printf '%s' "$1-$2"; fi
}

# on_slices [--keep_going | --parallel] FUNC [ARG...]: FUNC once per slice, with TPU_NAME set to
# that slice's node (slice_node) and SLICE_ID to its index; TPU_NAME is restored after. With one
# slice every form is a plain call of FUNC, as before multislice. With several:
#   (default)     in order, stopping at the first failure (as set -e does for one)
#   --keep_going  in order, every slice, then the last failure's exit status
#   --parallel    every slice at once, so that no slice waits for another's (a SIGTERM's grace
#                 period, a log that never ends); in order under --dry_run, so its output is
#                 deterministic. Each runs in its own process group: an interrupt or SIGTERM
#                 to this script reaches all of them, and gcloud's ssh gets no stdin.
on_slices() {
  local mode=stop
  case "$1" in
    --keep_going) mode=keep; shift ;;
    --parallel) mode=parallel; shift ;;
  esac
  if [ "$TPU_SLICES" = 1 ]; then
    # shellcheck disable=SC2034  # read by FUNC
    SLICE_ID=0
    "$@"
    return
  fi
  if [ "$mode" = parallel ] && [ "$DRY_RUN" = 1 ]; then mode=keep; fi
  local name=$TPU_NAME i rc=0
  SLICE_PIDS=()
  if [ "$mode" = parallel ]; then
    trap 'kill -TERM -- "${SLICE_PIDS[@]/#/-}" 2>/dev/null; exit 130' INT
    trap 'kill -TERM -- "${SLICE_PIDS[@]/#/-}" 2>/dev/null; exit 143' TERM
  fi
  for ((i = 0; i < TPU_SLICES; i++)); do
    # shellcheck disable=SC2034  # read by FUNC (launch.sh: MEGASCALE_SLICE_ID)
    SLICE_ID=$i
    TPU_NAME=$(slice_node "$name" "$i")
    case "$mode" in
      stop) "$@" || { rc=$?; break; } ;;
      keep) "$@" || rc=$? ;;
      parallel)
        set -m  # job control: each slice's job in its own process group
        "$@" </dev/null &
        SLICE_PIDS+=("$!")
        set +m ;;
    esac
  done
  TPU_NAME=$name
  if [ "$mode" = parallel ]; then
    for i in "${SLICE_PIDS[@]}"; do wait "$i" || rc=$?; done
    trap - INT TERM
    SLICE_PIDS=()
  fi
  return "$rc"
}

# runtime_for_type TYPE: the TPU software version for an accelerator type's generation
# (https://cloud.google.com/tpu/docs/runtimes, "PyTorch and JAX").
runtime_for_type() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# check_run_name NAME: run names become folder names on the workers.
check_run_name() {
  [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._=,+-]*$ ]] ||
    die "run name '$1' must be letters, digits and . _ - = , + (it names a folder)"
}

# Runs live in ~/o3video_runs/RUN on every worker: run.sh (the command), and per worker
# (hostname) HOST.log, HOST.pid (the run's process group) and HOST.exit (its exit status).
TPU_RUN=${TPU_RUN:-o3video}

# remote_run_vars: the start of a worker command that sets d (the run's folder) and h.
remote_run_vars() {
  check_run_name "$TPU_RUN"
  printf 'd="$HOME"/o3video_runs/%s; h=$(hostname); ' "$TPU_RUN"
}

# home_path_expr WHAT PATH: PATH as a word for the worker's shell (relative: under $HOME).
home_path_expr() {
  local what=$1 p=$2
  if [[ ! "$p" =~ ^[A-Za-z0-9._/-]+$ ]] || [[ "$p" =~ ^(/|\.|\.\.)/?$ ]]; then
    die "$what '$p' must be a plain folder path (letters, digits, . _ - /)"
  fi
  case "$p" in
    /*) printf '%s' "$p" ;;
    *) printf '"$HOME"/%s' "$p" ;;
  esac
}

# remote_dir_expr: the code folder as a word for the worker's shell.
remote_dir_expr() { home_path_expr --remote_dir "$TPU_REMOTE_DIR"; }

# venv_expr: the workers' Python environment (setup_workers.sh makes it, launch.sh uses it).
venv_expr() { home_path_expr --venv "$TPU_VENV"; }
