#!/usr/bin/env bash
# Installs the Debian packages the load benchmark (`npm run bench`) needs: wrk, h2load
# (nghttp2-client), nginx, curl and openssl (the TLS rows' certificate). Idempotent: does nothing when every tool is already present;
# otherwise runs `apt-get update` once and installs only what is missing. Needs root (or sudo).
set -euo pipefail

declare -A tool_of=( [wrk]=wrk [nghttp2-client]=h2load [nginx]=nginx [curl]=curl [openssl]=openssl )
missing=()
for pkg in wrk nghttp2-client nginx curl openssl; do
  tool="${tool_of[$pkg]}"
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-bench-deps: wrk, h2load, nginx, curl and openssl are already installed"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "install-bench-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-bench-deps: installing ${missing[*]}"
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-bench-deps: done"
