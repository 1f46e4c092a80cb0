#!/usr/bin/env bash
# Delete a TPU VM (and with --queued its queued resource NAME-qr, which deletes the node too).
# Usage: tpu_scripts/delete_tpu_vm.sh --name NAME --zone ZONE [--queued] [--dry_run]
#   plus the common options of tpu_scripts/_common.sh (--slices N: the queued resource NAME-qr
#   with all its nodes; implies --queued)
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

QUEUED=0
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --queued) QUEUED=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
require_name_zone
gcloud_flags
if [ "$QUEUED" = 1 ] || [ "$TPU_SLICES" -gt 1 ]; then
  gcloud_run compute tpus queued-resources delete "$TPU_NAME-qr" "${GFLAGS[@]}" --force --quiet
else
  gcloud_run compute tpus tpu-vm delete "$TPU_NAME" "${GFLAGS[@]}" --quiet
fi
