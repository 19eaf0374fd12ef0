#!/usr/bin/env bash
# Makes a local CA (once) and a certificate signed by it for development and tests.
#
#   scripts/gen-dev-cert.sh [--out DIR] [--name NAME] [extra DNS names or IPs ...]
#
# The certificate covers localhost, *.localhost, 127.0.0.1, ::1 and every extra name given.
# A wildcard covers ONE label only: *.localhost matches app.localhost and workspace-1-3000.localhost
# but not app.3000.localhost. For <container>.<port>.localhost, add one wildcard per port you use:
#   scripts/gen-dev-cert.sh '*.3000.localhost' '*.5173.localhost' '*.39378.localhost'
#
# Writes DIR/ca.pem, DIR/ca-key.pem (kept across runs), DIR/NAME.pem and DIR/NAME-key.pem.
# Trust DIR/ca.pem in a browser or pass it as `ca` to clients; proxy options:
#   tls: { certFile: 'DIR/NAME.pem', keyFile: 'DIR/NAME-key.pem' }
set -euo pipefail
out=certs
name=localhost
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
command -v openssl >/dev/null || { echo "gen-dev-cert: openssl is required (apt-get install -y openssl)" >&2; exit 1; }
mkdir -p "$out"
if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca-key.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -subj "/CN=cmux-proxy local CA" \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
san="DNS:localhost,DNS:*.localhost,IP:127.0.0.1,IP:::1"
for n in "${extra[@]}"; do
  if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san="$san,IP:$n"; else san="$san,DNS:$n"; fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$name" -keyout "$tmp/key.pem" -out "$tmp/csr.pem" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" > "$tmp/ext.cnf"
openssl x509 -req -in "$tmp/csr.pem" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial -days 397 -sha256 \
  -extfile "$tmp/ext.cnf" -out "$tmp/cert.pem" 2>/dev/null
mv "$tmp/key.pem" "$out/$name-key.pem"
mv "$tmp/cert.pem" "$out/$name.pem"
echo "gen-dev-cert: wrote $out/$name.pem and $out/$name-key.pem (CA: $out/ca.pem) for $san"
