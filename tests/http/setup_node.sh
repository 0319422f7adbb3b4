#!/usr/bin/env bash
# Installs what the HTTP API's client tests run: the official `openai` npm client (6.x: the 7.x
# line needs Node.js 22, Debian 12 has 20) and `playwright-core` (drives Debian's chromium for
# the console test), pinned, into DIR/node_modules. Node.js, npm and chromium come from Debian
# (deploy/install-deps.sh lists them; installed here too when missing and running as root).
# Idempotent: a DIR that already holds the pinned versions is left as it is.
# Usage: setup_node.sh DIR
set -euo pipefail
DIR=${1:?usage: setup_node.sh DIR}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)  # node's require() needs an absolute path
OPENAI_VERSION=6.30.1
PLAYWRIGHT_VERSION=1.65.2
log() { printf '[http-setup] %s\n' "$*"; }

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -ne 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${need[*]}: run deploy/install-deps.sh as root"; exit 1
  fi
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi

installed() {  # name version
  [ -f "$DIR/node_modules/$1/package.json" ] &&
    node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
      "$DIR/node_modules/$1/package.json" "$2"
}
if installed openai "$OPENAI_VERSION" && installed playwright-core "$PLAYWRIGHT_VERSION"; then
  log "openai $OPENAI_VERSION and playwright-core $PLAYWRIGHT_VERSION already in $DIR"
  exit 0
fi
log "npm install openai@$OPENAI_VERSION playwright-core@$PLAYWRIGHT_VERSION into $DIR"
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the test uses Debian's chromium, never a downloaded one.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --no-save --prefix "$DIR" \
  "openai@$OPENAI_VERSION" "playwright-core@$PLAYWRIGHT_VERSION"
installed openai "$OPENAI_VERSION" && installed playwright-core "$PLAYWRIGHT_VERSION" ||
  { log "npm did not install the pinned versions"; exit 1; }
log "node $(node --version), openai $OPENAI_VERSION, playwright-core $PLAYWRIGHT_VERSION, $(/usr/bin/chromium --version 2>/dev/null | head -1)"
