#!/usr/bin/env bash
# pipelines/caption.sh - caption a dataset (DATASET/metadata.jsonl and its
# images) with df-caption: one resumable command per machine, or GNU
# parallel across machines. The original project captioned its 265,000
# images by splitting the index range across five people by hand; here each
# machine runs
#
#   SHARD=3/5 pipelines/caption.sh /data/faces        # machine 3 of 5
#
# or one machine hands the work to all of them:
#
#   HOSTS=hosts.txt pipelines/caption.sh /data/faces  # GNU parallel --sshloginfile
#
# Rerun the same command after an interruption or failures: records already
# captioned in the output are neither sent nor written again (--resume), so
# the output file is completed in place. The script ends by counting what
# is still missing and exits 0 only when every record of the selection has a
# caption (1: rerun it; failed records carry their error in the output).
#
# Environment:
#   OUT            output (default DATASET/captions.jsonl, or
#                  DATASET/captions-K-of-N.jsonl with SHARD)
#   SHARD=K/N      caption only this machine's share (df-caption --shard)
#   HOSTS=FILE     GNU parallel --sshloginfile: the pending records go to these
#                  machines in chunks (each needs df-caption on its PATH and the
#                  dataset at the same absolute path; the key variable is
#                  passed with parallel --env, which puts it on the remote
#                  command line; leave it unset there if the hosts have it)
#   CHUNK=500      records per GNU parallel job     PER_HOST=2  jobs per host
#   JOBS=8         requests in flight per df-caption
#   RPM            requests per minute per df-caption (default: no limit)
#   API_KEY_ENV    variable holding the key (default GROQ_API_KEY)
#   PASS_KEY=1     pass that variable to the hosts with parallel --env
#   CAPTION_FLAGS  more df-caption options (--endpoint, --model, --max-side 512 ...)
#   DF_CAPTION     the program (default: bin/df-caption of this tree, else PATH)
# Tested by tests/tools/test-df-caption.sh (both modes, against the local server).
set -euo pipefail

usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
[ $# -eq 1 ] || { usage >&2; exit 2; }
[ "$1" = -h ] || [ "$1" = --help ] && { usage; exit 0; }

DATASET=$(cd "$1" && pwd)
META=$DATASET/metadata.jsonl
[ -r "$META" ] || { echo "caption.sh: $META: cannot read it" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "${DF_CAPTION:-}" ]; then
    DF_CAPTION=df-caption
    [ -x "$HERE/../bin/df-caption" ] && DF_CAPTION=$HERE/../bin/df-caption
fi
API_KEY_ENV=${API_KEY_ENV:-GROQ_API_KEY}
if [ -n "${SHARD:-}" ]; then
    OUT=${OUT:-$DATASET/captions-${SHARD%/*}-of-${SHARD#*/}.jsonl}
else
    OUT=${OUT:-$DATASET/captions.jsonl}
fi
touch "$OUT"
# CAPTION_FLAGS is split on spaces on purpose: it holds several options.
# shellcheck disable=SC2206
flags=(--root "$DATASET" --api-key-env "$API_KEY_ENV" -j "${JOBS:-8}" ${RPM:+--rpm "$RPM"}
       ${SHARD:+--shard "$SHARD"} ${CAPTION_FLAGS:-})

if [ -z "${HOSTS:-}" ]; then
    "$DF_CAPTION" "${flags[@]}" --resume "$OUT" < "$META" >> "$OUT"
else
    # Only the records still missing a caption travel; each job's output
    # lines are whole, so they append safely to one file.
    env_args=()
    [ "${PASS_KEY:-1}" = 1 ] && [ -n "${!API_KEY_ENV:-}" ] && env_args=(--env "$API_KEY_ENV")
    "$DF_CAPTION" "${flags[@]}" --pending --resume "$OUT" --quiet < "$META" |
        parallel --pipe -N "${CHUNK:-500}" --sshloginfile "$HOSTS" -j "${PER_HOST:-2}" \
            "${env_args[@]}" "$DF_CAPTION" "${flags[@]}" --quiet >> "$OUT"
fi

left=$("$DF_CAPTION" "${flags[@]}" --pending --resume "$OUT" --quiet < "$META" | wc -l)
if [ "$left" -gt 0 ]; then
    echo "caption.sh: $left records still without a caption in $OUT; run again to retry them" >&2
    exit 1
fi
echo "caption.sh: every selected record is captioned in $OUT" >&2
