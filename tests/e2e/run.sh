#!/usr/bin/env bash
# End-to-end browser test of the web chat page (docs/web-ui.md):
# builds `chatglm` (a no-op when up to date; the page is compiled into it),
# installs playwright-core from tests/e2e/package-lock.json (no browser
# download: the system Chromium is used), starts `chatglm serve` on the tiny
# dev model and drives the page in headless Chromium. Exits non-zero on failure.
#
# Env: CHATGLM_BIN (use this binary, skip the build), CHATGLM_TESTDATA
#      (default testdata/ of the repository), CHROMIUM (default /usr/bin/chromium),
#      SCREENSHOTS (default docs/screenshots), E2E_ARTIFACTS (default target/e2e).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
testdata=${CHATGLM_TESTDATA:-$root/testdata}
export CHATGLM_MODEL=${CHATGLM_MODEL:-$testdata/dev/model/safetensors-f32}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [[ ! -x "$CHROMIUM" ]]; then
    echo "error: no Chromium at $CHROMIUM (Debian/Ubuntu: apt-get install -y chromium; or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
fi
command -v node >/dev/null || { echo "error: node (>= 18) is needed" >&2; exit 1; }

if [[ -z "${CHATGLM_BIN:-}" ]]; then
    # Always ask cargo: the page is embedded with include_str!, so a binary
    # built before the last `npm run build` would serve a stale page.
    (cd "$root" && cargo build --release -p chatglm-cli)
    export CHATGLM_BIN=$root/target/release/chatglm
fi
[[ -x "$CHATGLM_BIN" ]] || { echo "error: $CHATGLM_BIN is not executable" >&2; exit 1; }

cd "$here"
if [[ ! -d node_modules/playwright-core ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi
exec node web_ui.test.mjs
