#!/usr/bin/env bash
# Runs a command with a pinned Node.js release first on PATH:
#   bash scripts/with-node.sh 22 npm test
#   bash scripts/with-node.sh 24 node --version
# The first argument is a major line (20, 22, 24: the exact versions pinned below) or an exact
# version (22.23.5). The binary comes from the npm registry's platform package
# (node-<os>-<arch>@<version>, the package the `node` package installs), fetched with `npm pack`
# (which checks the registry's integrity hash) on first use and cached outside the clone in
# ${CMUX_PROXY_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cmux-proxy-node}/<version>.
# npm itself is whatever npm is on PATH; it runs on the selected node.
set -euo pipefail

case "${1:-}" in
  20) version=20.20.2 ;;
  22) version=22.23.5 ;;
  24) version=24.22.3 ;;
  [0-9]*.[0-9]*.[0-9]*) version=$1 ;;
  *)
    echo "usage: $0 <20|22|24|x.y.z> <command...>" >&2
    exit 2
    ;;
esac
shift
if [ $# -eq 0 ]; then
  echo "usage: $0 <20|22|24|x.y.z> <command...>" >&2
  exit 2
fi

case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) echo "with-node: unsupported OS $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "with-node: unsupported CPU $(uname -m)" >&2; exit 1 ;;
esac

cache="${CMUX_PROXY_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cmux-proxy-node}"
dir="$cache/$version"
if [ ! -x "$dir/bin/node" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.fetch-$version.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "with-node: fetching node-$os-$arch@$version from the npm registry into $dir" >&2
  (cd "$tmp" && npm pack --silent "node-$os-$arch@$version" >/dev/null)
  tar -xzf "$tmp"/node-"$os"-"$arch"-"$version".tgz -C "$tmp"
  "$tmp/package/bin/node" --version >/dev/null
  # A concurrent run may have installed it meanwhile: then this copy is dropped.
  [ -e "$dir" ] || mv "$tmp/package" "$dir"
  rm -rf "$tmp"
  trap - EXIT
  if [ ! -x "$dir/bin/node" ]; then
    echo "with-node: $dir/bin/node is missing after the install" >&2
    exit 1
  fi
fi

export PATH="$dir/bin:$PATH"
got="$(node --version)"
if [ "$got" != "v$version" ]; then
  echo "with-node: expected node v$version first on PATH, got $got" >&2
  exit 1
fi
exec "$@"
