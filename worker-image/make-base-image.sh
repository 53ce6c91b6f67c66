#!/usr/bin/env bash
# Make a Debian base image on a machine whose Docker engine cannot pull (no
# registry), from the Debian mirror apt already uses:
#
#   debootstrap --variant=minbase --include=PACKAGES SUITE DIR [MIRROR]
#   tar -C DIR -c . | docker import - NAME
#
# Usage: worker-image/make-base-image.sh [NAME [SUITE [PACKAGE...]]]
#   default: clm-workers-base:bookworm bookworm python3-minimal libpython3.11-stdlib
#   e.g.:    worker-image/make-base-image.sh clm-workers-base:trixie-clm trixie \
#                python3 python3-venv plantuml default-jre-headless
# Environment: MIRROR (default: the mirror /etc/apt/sources* has for SUITE,
# else the one it has for this machine's own Debian release, else
# debootstrap's own default).
#
# Idempotent: when NAME exists and was made with the same packages it returns
# at once (the package list is stored in the image's label
# clm-workers.packages).  Needs root and debootstrap (apt-get install
# debootstrap); the default image takes about a minute and 110 MB.  Where the
# engine can pull, skip this and build FROM python:3.11-slim instead.
set -euo pipefail

NAME=${1:-clm-workers-base:bookworm}
SUITE=${2:-bookworm}
if [ $# -gt 2 ]; then
    PACKAGES=("${@:3}")
else
    PACKAGES=(python3-minimal libpython3.11-stdlib)
fi
INCLUDE=$(IFS=,; echo "${PACKAGES[*]}")

# An image made before images carried the label has none: it counts as made with these packages.
if made_with=$(docker image inspect -f '{{index .Config.Labels "clm-workers.packages"}}' "$NAME" 2>/dev/null) \
        && { [ "$made_with" = "$INCLUDE" ] || [ -z "$made_with" ] || [ "$made_with" = "<no value>" ]; }; then
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

# The first mirror apt uses for the plain suite $1 (not -updates or -security),
# from one-line sources (deb [opts] URI SUITE ...) or deb822 stanzas.
apt_mirror() {
    local suite=$1 lists=() sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && lists+=("$f"); done
    for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && sources+=("$f"); done
    if [ ${#lists[@]} -gt 0 ]; then
        awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "${lists[@]}"
    fi
    if [ ${#sources[@]} -gt 0 ]; then
        awk -v suite="$suite" '
            function flush() { if (uri != "" && has_suite && !disabled) { print uri; found = 1; exit } }
            /^[ \t]*$/ { flush(); uri = ""; has_suite = 0; disabled = 0; next }
            /^Types:/ && !/[ \t]deb([ \t]|$)/ { disabled = 1 }
            /^Enabled:[ \t]*no/ { disabled = 1 }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
            END { if (!found) flush() }' "${sources[@]}"
    fi
}

# This machine's own Debian release (bookworm, trixie, ...), if it is Debian.
host_suite() {
    # shellcheck disable=SC1091  # os-release is a plain list of assignments
    [ -r /etc/os-release ] && (. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}")
}

# A Debian mirror carries every release, so the one apt uses for this
# machine's release serves SUITE too.
MIRROR=${MIRROR:-$(apt_mirror "$SUITE" | head -n 1)}
if [ -z "$MIRROR" ] && [ -n "$(host_suite)" ]; then
    MIRROR=$(apt_mirror "$(host_suite)" | head -n 1)
fi
mirror_args=()
if [ -n "$MIRROR" ]; then
    mirror_args=("$MIRROR")
    from="from $MIRROR"
else
    from="from debootstrap's default mirror (none found in /etc/apt)"
fi

root=$(mktemp -d /tmp/clm-base.XXXXXX)
trap 'rm -rf "$root" "$root.log"' EXIT

echo "make-base-image: debootstrap $SUITE $from with $INCLUDE"
debootstrap --variant=minbase --include="$INCLUDE" \
    "$SUITE" "$root" "${mirror_args[@]}" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    echo "make-base-image: debootstrap failed (log above); set MIRROR to a reachable Debian mirror" >&2
    exit 1
}

# Nothing a worker reads: package caches and lists, docs, man pages, locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/*

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL clm-workers.packages=$INCLUDE" \
    --message "debootstrap --variant=minbase $SUITE + $INCLUDE" \
    - "$NAME" >/dev/null

# The worker runtime needs these modules (sqlite3 is in libpython3.x-stdlib).
if ! docker run --rm --network none "$NAME" python3 -c \
        "import sqlite3, json, pathlib, threading, _signal; sqlite3.connect(':memory:').execute('select 1')"; then
    docker image rm "$NAME" >/dev/null 2>&1 || true
    echo "make-base-image: python3 in $NAME cannot import sqlite3; image removed" >&2
    exit 1
fi
echo "make-base-image: built $NAME ($(docker image inspect -f '{{.Size}}' "$NAME" | awk '{printf "%.0f MB", $1 / 1e6}'))"
