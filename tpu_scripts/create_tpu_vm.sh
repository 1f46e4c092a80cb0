#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice): on demand, spot, or as a queued resource.
# Usage: tpu_scripts/create_tpu_vm.sh --name NAME --zone ZONE --type TYPE [options]
#   --spot              a Spot VM (cheap, preemptible at any time; a queued spot request with --queued)
#   --queued            request through the queued-resources API (the way to get v5p/v6e capacity):
#                       the queued resource is named NAME-qr and its node NAME
#   --valid_for DUR     with --queued: drop the request if not filled within DUR (e.g. 6h)
#   --wait              with --queued: poll until the request is ACTIVE (or FAILED); a request
#                       that already exists is polled, not re-created, so a rerun is harmless
#   --runtime VERSION   TPU software version; default by generation: v6e v2-alpha-tpuv6e,
#                       v5p v2-alpha-tpuv5, v5e (v5litepod) v2-alpha-tpuv5-lite,
#                       v4 and older tpu-ubuntu2204-base
#   --slices N          multislice: N slices in one queued resource NAME-qr (implies --queued),
#                       its nodes NAME-0 ... NAME-(N-1) (--node-count N --node-prefix NAME)
#   plus the common options of tpu_scripts/_common.sh (--project, --dry_run, env TPU_NAME, ...)
#   Any other flag goes to the gcloud create command as given (after ours), e.g. --reserved,
#   --network NET, --subnetwork SUB, --internal-ips (with --iap), --service-account SA,
#   --scopes S, --boot-disk-size... (tpu-vm create only), --labels k=v, --best-effort,
#   --node-count N and --node-prefix P (queued multislice by hand; --slices N does it).
# e.g. tpu_scripts/create_tpu_vm.sh --name o3v --zone us-east5-a --type v5p-64 --queued --wait
#      tpu_scripts/create_tpu_vm.sh --name o3v-spot --zone us-east1-d --type v6e-8 --spot
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

SPOT=0; QUEUED=0; WAIT=0; VALID_FOR=""; RUNTIME=${TPU_RUNTIME:-}; PASS=()
parse_common "$@"
take_positional TPU_NAME TPU_ZONE TPU_TYPE RUNTIME
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --wait) WAIT=1; shift ;;
    --valid_for) VALID_FOR=${2:?--valid_for needs a duration}; shift 2 ;;
    --runtime) RUNTIME=${2:?--runtime needs a version}; shift 2 ;;
    *) PASS+=("$1"); shift ;;
  esac
done
if [ "${#PASS[@]}" -gt 0 ] && [[ "${PASS[0]}" != -* ]]; then
  die "unexpected argument '${PASS[0]}' (gcloud flags start with --; see --help)"
fi
require_name_zone
[ -n "$TPU_TYPE" ] || die "no accelerator type: pass --type (e.g. v5p-64, v6e-8) or set TPU_TYPE"
if [ "$TPU_SLICES" -gt 1 ]; then  # the nodes the other scripts' --slices N address
  for flag in "${PASS[@]+"${PASS[@]}"}"; do
    case "$flag" in
      --node-count | --node-count=* | --node-prefix | --node-prefix=* | --node-id | --node-id=*)
        die "--slices $TPU_SLICES names the nodes itself ($TPU_NAME-0 ...): drop $flag" ;;
    esac
  done
  QUEUED=1
  PASS=(--node-count "$TPU_SLICES" --node-prefix "$TPU_NAME" "${PASS[@]+"${PASS[@]}"}")
fi
if [ -z "$RUNTIME" ]; then
  RUNTIME=$(runtime_for_type "$TPU_TYPE") ||
    die "no default runtime for accelerator type '$TPU_TYPE': pass --runtime VERSION"
fi
if [ "$QUEUED" = 0 ] && { [ "$WAIT" = 1 ] || [ -n "$VALID_FOR" ]; }; then
  die "--wait and --valid_for apply to --queued requests"
fi
gcloud_flags
SPOT_FLAG=()
if [ "$SPOT" = 1 ]; then SPOT_FLAG=(--spot); fi

if [ "$QUEUED" = 0 ]; then
  gcloud_run compute tpus tpu-vm create "$TPU_NAME" "${GFLAGS[@]}" \
    --accelerator-type="$TPU_TYPE" --version="$RUNTIME" "${SPOT_FLAG[@]+"${SPOT_FLAG[@]}"}" \
    "${PASS[@]+"${PASS[@]}"}"
  exit 0
fi
VALID=()
if [ -n "$VALID_FOR" ]; then VALID=(--valid-until-duration="$VALID_FOR"); fi
NODE=(--node-id="$TPU_NAME")
for flag in "${PASS[@]+"${PASS[@]}"}"; do  # a multislice request names its nodes by prefix
  case "$flag" in --node-count | --node-count=*) NODE=() ;; esac
done
create=(compute tpus queued-resources create "$TPU_NAME-qr" "${GFLAGS[@]}"
  "${NODE[@]+"${NODE[@]}"}" --accelerator-type="$TPU_TYPE" --runtime-version="$RUNTIME"
  "${SPOT_FLAG[@]+"${SPOT_FLAG[@]}"}" "${VALID[@]+"${VALID[@]}"}" "${PASS[@]+"${PASS[@]}"}")
if [ "$DRY_RUN" = 1 ] || [ "$WAIT" = 0 ]; then
  gcloud_run "${create[@]}"
elif ! out=$(gcloud "${create[@]}" 2>&1); then
  if [[ "$out" != *"already exists"* ]]; then
    printf '%s\n' "$out" >&2
    exit 1
  fi
  echo "$TPU_NAME-qr already exists: waiting for it"
else
  if [ -n "$out" ]; then printf '%s\n' "$out"; fi
fi
if [ "$WAIT" = 1 ]; then
  describe=(compute tpus queued-resources describe "$TPU_NAME-qr" "${GFLAGS[@]}"
    --format="value(state.state)")
  if [ "$DRY_RUN" = 1 ]; then
    gcloud_run "${describe[@]}"
    echo "# (repeated every ${TPU_POLL_S:-30}s until ACTIVE or FAILED)"
    exit 0
  fi
  while true; do
    state=$(gcloud "${describe[@]}")
    echo "$(date -u +%H:%M:%S) $TPU_NAME-qr: $state"
    case "$state" in
      ACTIVE) exit 0 ;;
      FAILED | SUSPENDED) exit 1 ;;
    esac
    sleep "${TPU_POLL_S:-30}"
  done
fi
