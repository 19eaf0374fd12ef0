#!/usr/bin/env bash
# Installs code-server (VS Code in the browser) for test/apps-code-server.test.mjs, outside the
# project's node_modules:
#
#   scripts/install-code-server.sh          install (once; idempotent)
#   scripts/install-code-server.sh --dir    print the install directory
#
# Why not a devDependency: code-server's postinstall refuses any Node.js but 24 ("code-server
# currently requires node v24"), so `npm ci` on Node 20 or 22 would fail; and under Node 24 it
# builds native modules (node-pty, argon2, kerberos...) with node-gyp, which needs a C++ toolchain
# and the GSSAPI headers (Debian libkrb5-dev; without them: "gssapi/gssapi.h: No such file or
# directory" in kerberos). So it is installed here with the Node 24 of scripts/with-node.sh, into
# ${CMUX_PROXY_CODE_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cmux-proxy-code-server}/<version>,
# and the test runs it with that Node 24 whatever Node runs the tests. About 5 minutes (the native
# builds), nothing downloaded but npm packages.
set -euo pipefail
version=4.139.1
cache="${CMUX_PROXY_CODE_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cmux-proxy-code-server}"
dir="$cache/$version"
if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi
entry="$dir/node_modules/code-server/out/node/entry.js"
if [ -f "$dir/.installed" ] && [ -f "$entry" ]; then exit 0; fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$cache"
rm -rf "$dir"
tmp="$(mktemp -d "$cache/.install-$version.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "install-code-server: code-server@$version into $dir (native builds: a few minutes)" >&2
echo '{"name":"cmux-proxy-code-server","private":true}' >"$tmp/package.json"
(cd "$tmp" && bash "$here/with-node.sh" 24 npm install --no-audit --no-fund --save-exact --loglevel=error "code-server@$version" >"$tmp/install.log" 2>&1) || {
  tail -40 "$tmp/install.log" >&2
  echo "install-code-server: npm install code-server@$version failed (log above)" >&2
  exit 1
}
touch "$tmp/.installed"
# A concurrent run may have installed it meanwhile: then this copy is dropped.
[ -e "$dir" ] || mv "$tmp" "$dir"
trap - EXIT
rm -rf "$tmp"
