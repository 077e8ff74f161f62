#!/bin/sh
# Install the packages listed in $1 that are not installed yet. On the offline base they all
# are, so this needs no network; on an official Debian image it runs apt-get.
set -eu
missing=""
for pkg in $(grep -v '^#' "$1"); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
    rm -rf /var/lib/apt/lists/*
fi
