#!/usr/bin/env bash
# Build the worker image (default clm-workers-sim:latest) from worker-image/Dockerfile.
#
#   worker-image/build-image.sh            # base: the local debootstrap image, made if missing
#   BASE=python:3.11-slim worker-image/build-image.sh   # where the engine can pull
#
# Environment: IMAGE (the tag to build), BASE (the base image).  Idempotent and
# fast when nothing changed: the base is made only when missing, and docker's
# build cache reuses every layer (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-clm-workers-sim:latest}
LOCAL_BASE=clm-workers-base:bookworm
BASE=${BASE:-$LOCAL_BASE}

if [ "$BASE" = "$LOCAL_BASE" ]; then
    bash worker-image/make-base-image.sh "$LOCAL_BASE"
fi
# The context is src/: the Dockerfile copies only the stdlib worker modules from it.
docker build --quiet --build-arg BASE="$BASE" --tag "$IMAGE" --file worker-image/Dockerfile src >/dev/null
echo "build-image: built $IMAGE (FROM $BASE)"
