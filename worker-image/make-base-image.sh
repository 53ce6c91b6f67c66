#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 on a machine whose Docker
# engine cannot pull (no registry), from the Debian mirror apt already uses:
#
#   debootstrap --variant=minbase --include=python3-minimal,libpython3.11-stdlib bookworm DIR MIRROR
#   tar -C DIR -c . | docker import - NAME
#
# Usage: worker-image/make-base-image.sh [NAME]     (default clm-workers-base:bookworm)
# Environment: MIRROR (default: the bookworm mirror of /etc/apt/sources*).
#
# Idempotent: when NAME exists it returns at once.  Needs root and debootstrap
# (apt-get install debootstrap); takes about a minute and 110 MB of image.
# Where the engine can pull, skip this and build FROM python:3.11-slim instead.
set -euo pipefail

NAME=${1:-clm-workers-base:bookworm}
SUITE=bookworm

if docker image inspect "$NAME" >/dev/null 2>&1; then
    echo "base image $NAME exists"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "make-base-image: debootstrap is not installed; run: apt-get install debootstrap" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "make-base-image: debootstrap needs root; run this script with sudo" >&2
    exit 1
fi

# The first mirror apt uses for the plain suite (not -updates or -security),
# from one-line sources (deb [opts] URI SUITE ...) or deb822 stanzas.
apt_mirror() {
    local lists=() sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && lists+=("$f"); done
    for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && sources+=("$f"); done
    if [ ${#lists[@]} -gt 0 ]; then
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "${lists[@]}"
    fi
    if [ ${#sources[@]} -gt 0 ]; then
        awk -v suite="$SUITE" '
            function flush() { if (uri != "" && has_suite && !disabled) { print uri; found = 1; exit } }
            /^[ \t]*$/ { flush(); uri = ""; has_suite = 0; disabled = 0; next }
            /^Types:/ && !/[ \t]deb([ \t]|$)/ { disabled = 1 }
            /^Enabled:[ \t]*no/ { disabled = 1 }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
            END { if (!found) flush() }' "${sources[@]}"
    fi
}

MIRROR=${MIRROR:-$(apt_mirror | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/clm-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "make-base-image: debootstrap $SUITE from $MIRROR (about a minute)"
debootstrap --variant=minbase --include=python3-minimal,libpython3.11-stdlib \
    "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    rm -f "$root.log"
    echo "make-base-image: debootstrap failed (log above); set MIRROR to a reachable Debian mirror" >&2
    exit 1
}
rm -f "$root.log"

# Nothing a worker reads: package caches and lists, docs, man pages, locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/*

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE + python3-minimal, libpython3.11-stdlib" \
    - "$NAME" >/dev/null

# The worker runtime needs these modules (sqlite3 is in libpython3.11-stdlib).
if ! docker run --rm --network none "$NAME" python3 -c \
        "import sqlite3, json, pathlib, threading, _signal; sqlite3.connect(':memory:').execute('select 1')"; then
    docker image rm "$NAME" >/dev/null 2>&1 || true
    echo "make-base-image: python3 in $NAME cannot import sqlite3; image removed" >&2
    exit 1
fi
echo "make-base-image: built $NAME ($(docker image inspect -f '{{.Size}}' "$NAME" | awk '{printf "%.0f MB", $1 / 1e6}'))"
