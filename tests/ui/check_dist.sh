#!/usr/bin/env bash
# The committed web page bundle (crates/chatglm-server/ui/dist/index.html, which
# the `chatglm` binary embeds) must be exactly what its sources build to:
# rebuilds it in a scratch copy with the locked npm packages and compares.
# Exits non-zero, with the first differing bytes, when they differ.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ui=$root/crates/chatglm-server/ui
command -v node >/dev/null || { echo "error: node (>= 18) is needed" >&2; exit 1; }
command -v npm >/dev/null || { echo "error: npm is needed" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r "$ui/package.json" "$ui/package-lock.json" "$ui/build.mjs" "$ui/src" "$scratch/"
mkdir -p "$scratch/dist"
(cd "$scratch" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && node build.mjs >/dev/null)
if cmp "$scratch/dist/index.html" "$ui/dist/index.html"; then
  echo "ui/dist/index.html matches its sources ($(wc -c <"$ui/dist/index.html") bytes)"
else
  echo "error: crates/chatglm-server/ui/dist/index.html is not what its sources build to;" >&2
  echo "       run: cd crates/chatglm-server/ui && npm ci && npm run build, and commit dist/" >&2
  exit 1
fi
