#!/usr/bin/env bash
# Debian packages the test suite uses: real clients (curl; nghttp2's h2load/nghttp; headless
# Chromium at /usr/bin/chromium for test/browser.test.mjs) and ss (iproute2) to read socket
# options from the kernel; prometheus (promtool and the server) for the /metrics tests; haproxy
# (a load balancer sending the PROXY protocol, test/haproxy.test.mjs);
# jupyter-server and python3-ipykernel (a Python kernel) for test/apps-jupyter.test.mjs, without
# their recommended packages (scipy, matplotlib, pandoc: ~500 MB nothing uses); a C++ toolchain
# and libkrb5-dev to build code-server's native modules, then code-server itself
# (scripts/install-code-server.sh, with its reasons) for test/apps-code-server.test.mjs.
# Idempotent: installs only what is missing. Runs as root (CI) or through sudo.
set -euo pipefail
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nghttp >/dev/null 2>&1 || need+=(nghttp2-client)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
lean=()
[ -x /usr/bin/jupyter-server ] || lean+=(jupyter-server)
/usr/bin/python3 -c 'import ipykernel' >/dev/null 2>&1 || lean+=(python3-ipykernel)
{ command -v g++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || lean+=(g++ make)
[ -f /usr/include/gssapi/gssapi.h ] || lean+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ] || [ ${#lean[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; fi
  if [ ${#lean[@]} -gt 0 ]; then $SUDO apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null; fi
fi
bash "$(dirname "$0")/install-code-server.sh"
