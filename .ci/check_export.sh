#!/usr/bin/env bash
# Export the notebooks into a scratch copy and fail if tsfm_wb/ in the working tree differs:
# tsfm_wb/*.py is generated, nbs/ is the source.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${TSFM_WB_VENV_BIN:-${root}/.venv/bin}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/nbs" "$root/settings.ini" "$tmp/"
mkdir -p "$tmp/tsfm_wb"
(cd "$tmp" && "$bin/nbdev_export" >/dev/null)
if ! diff -r -q -x __pycache__ -x bundled "$tmp/tsfm_wb" "$root/tsfm_wb"; then
  echo "export out of sync: tsfm_wb/ differs from what nbs/ exports." >&2
  echo "Edit the notebook, then run 'make export' (never hand-edit tsfm_wb/*.py)." >&2
  diff -r -u -x __pycache__ -x bundled "$tmp/tsfm_wb" "$root/tsfm_wb" | head -40 >&2 || true
  exit 1
fi
echo "export in sync: $(ls "$tmp/tsfm_wb"/*.py | wc -l) modules"
