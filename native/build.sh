#!/bin/sh
# Builds the attach agent (native/pxd-attach) when a C compiler and make are
# here; without them pxd still works, and `pxd volume attach` uses --via fuse.
cd "$(dirname "$0")" || exit 1
if ! command -v make >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
  echo "pxd: the attach agent is not built: no C compiler here (apt-get install build-essential, then npm run build); pxd volume attach will use --via fuse" >&2
  exit 0
fi
exec make --no-print-directory -s all
