#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM, replacing the worker's copy, and install it.
# The copy is a tarball of the files git knows (tracked and untracked-but-not-ignored, so no
# virtualenvs or build outputs); it is unpacked into a fresh folder that then replaces
# ~/REMOTE_DIR, so re-running never nests a second copy or leaves deleted files behind.
# Usage: tpu_scripts/setup_workers.sh --name NAME --zone ZONE [options]
#   --extra EXTRA       pip extra to install (default tpu: pip install -e ".[tpu]")
#   --no_install        only sync the code
#   --worker W          all (default) or one worker index
#   plus the common options of tpu_scripts/_common.sh (--remote_dir, --project, --iap, --dry_run)
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

EXTRA=tpu; INSTALL=1; WORKER=all
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --extra) EXTRA=${2:?--extra needs a name}; shift 2 ;;
    --no_install) INSTALL=0; shift ;;
    --worker) WORKER=${2:?--worker needs all or an index}; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
require_name_zone
[[ "$EXTRA" =~ ^[a-z0-9_,-]*$ ]] || die "--extra '$EXTRA' is not an extras list"
DEST=$(remote_dir_expr)

TARBALL=$(mktemp -d)/o3video_jax_sync.tgz
trap 'rm -rf "$(dirname "$TARBALL")"' EXIT
if git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  files=()
  while IFS= read -r -d '' f; do
    if [ -e "$REPO_ROOT/$f" ]; then files+=("$f"); fi  # skip tracked files deleted here
  done < <(git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard)
  printf '%s\0' "${files[@]}" | tar -C "$REPO_ROOT" --null -T - -czf "$TARBALL"
  echo "# code: $(git -C "$REPO_ROOT" rev-parse --short HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD || echo ' + local changes'), ${#files[@]} files" >&2
else
  tar -C "$REPO_ROOT" --exclude=.git --exclude=__pycache__ --exclude=.venv -czf "$TARBALL" .
fi

gcloud_flags
extra=()
if [ "$IAP" = 1 ]; then extra+=(--tunnel-through-iap); fi
gcloud_run compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:o3video_jax_sync.tgz" "${GFLAGS[@]}" \
  --worker="$WORKER" "${extra[@]+"${extra[@]}"}"

remote="set -e; dest=$DEST; new=\$(mktemp -d \"\$dest.new.XXXXXX\"); "
remote+="tar -xzf \"\$HOME\"/o3video_jax_sync.tgz -C \"\$new\"; rm -f \"\$HOME\"/o3video_jax_sync.tgz; "
remote+="rm -rf \"\$dest\"; mv \"\$new\" \"\$dest\"; cd \"\$dest\"; echo \"\$(hostname): code in \$dest\""
if [ "$INSTALL" = 1 ]; then
  remote+="; python3 -m pip install -q -U pip; python3 -m pip install -q -e \".[$EXTRA]\""
fi
ssh_workers "$WORKER" "$remote"
