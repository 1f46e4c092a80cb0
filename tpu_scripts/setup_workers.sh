#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM, replacing the worker's copy, and install it
# into a virtual environment with its own Python (the TPU VM images' Ubuntu 22.04 has 3.10; the
# package needs >= 3.11). The copy is a tarball of the files git knows (tracked and
# untracked-but-not-ignored, so no virtualenvs or build outputs); it is unpacked into a fresh
# folder that then replaces ~/REMOTE_DIR, so re-running never nests a second copy or leaves
# deleted files behind. The environment is made with uv (installed for the user if missing):
# `uv venv --python PY ~/VENV` (uv fetches that CPython when the image lacks it), then
# `uv pip install -c tpu_scripts/constraints-tpu.txt -e ".[EXTRA]"`, which pins jax, jaxlib and
# libtpu to the versions the AOT rows were checked with. launch.sh runs commands in it.
# Usage: tpu_scripts/setup_workers.sh --name NAME --zone ZONE [options]
#   --extra EXTRA       pip extra to install (default tpu: -e ".[tpu]")
#   --python VERSION    the environment's Python (default 3.11; 3.11 or newer)
#   --constraints FILE  pins, relative to the checkout (default tpu_scripts/constraints-tpu.txt)
#   --no_install        only sync the code
#   --worker W          all (default) or one worker index
#   plus the common options of tpu_scripts/_common.sh (--remote_dir, --venv, --project, --iap,
#   --dry_run, --slices: every worker of every slice, the slices at once)
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

EXTRA=tpu; INSTALL=1; WORKER=all; PYTHON=3.11; CONSTRAINTS=tpu_scripts/constraints-tpu.txt
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --extra) EXTRA=${2:?--extra needs a name}; shift 2 ;;
    --no_install) INSTALL=0; shift ;;
    --python) PYTHON=${2:?--python needs a version}; shift 2 ;;
    --constraints) CONSTRAINTS=${2:?--constraints needs a file}; shift 2 ;;
    --worker) WORKER=${2:?--worker needs all or an index}; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
require_name_zone
[[ "$EXTRA" =~ ^[a-z0-9_,-]*$ ]] || die "--extra '$EXTRA' is not an extras list"
if ! [[ "$PYTHON" =~ ^3\.([0-9]+)(\.[0-9]+)?$ ]] || [ "${BASH_REMATCH[1]}" -lt 11 ]; then
  die "--python '$PYTHON' must be a version 3.11 or newer (e.g. 3.11, 3.12.4)"
fi
if ! [[ "$CONSTRAINTS" =~ ^[A-Za-z0-9._/-]+$ ]] || [ ! -f "$REPO_ROOT/$CONSTRAINTS" ]; then
  die "--constraints '$CONSTRAINTS' is not a file of this checkout"
fi
DEST=$(remote_dir_expr)
VENV=$(venv_expr)

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


remote="set -e; dest=$DEST; new=\$(mktemp -d \"\$dest.new.XXXXXX\"); "
remote+="tar -xzf \"\$HOME\"/o3video_jax_sync.tgz -C \"\$new\"; rm -f \"\$HOME\"/o3video_jax_sync.tgz; "
remote+="rm -rf \"\$dest\"; mv \"\$new\" \"\$dest\"; cd \"\$dest\"; echo \"\$(hostname): code in \$dest\""
if [ "$INSTALL" = 1 ]; then
  remote+='; export PATH="$HOME/.local/bin:$PATH"; '
  remote+='command -v uv >/dev/null || python3 -m pip install -q --user uv || '
  remote+='curl -LsSf https://astral.sh/uv/install.sh | sh; '
  remote+="venv=$VENV; uv venv -q --allow-existing --python $PYTHON \"\$venv\"; "
  remote+="uv pip install -q --python \"\$venv/bin/python\" -c $CONSTRAINTS -e \".[$EXTRA]\"; "
  remote+='"$venv/bin/python" -c "import sys, jax; print(sys.argv[1], sys.version.split()[0], '
  remote+="'jax', jax.__version__, sys.executable)\" \"\$(hostname)\""
fi

setup_slice() {  # the tarball to the slice's workers, then unpack and install there
  gcloud_flags
  local extra=()
  if [ "$IAP" = 1 ]; then extra+=(--tunnel-through-iap); fi
  gcloud_run compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:o3video_jax_sync.tgz" "${GFLAGS[@]}" \
    --worker="$WORKER" "${extra[@]+"${extra[@]}"}" || return
  ssh_workers "$WORKER" "$remote"
}
on_slices --parallel setup_slice
