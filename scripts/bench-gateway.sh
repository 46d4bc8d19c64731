#!/usr/bin/env bash
# Compares `satchel gateway serve` with nginx (Debian's package) in one run:
# the same mTLS (the gateway's server certificate and key, client
# certificates from the same CA, verified by both), TLS 1.3 only, the same
# cipher suite (TLS_AES_256_GCM_SHA384) and key exchange (X25519), two
# workers each, and the same load tool (gateway/examples/tls-load.rs):
#   - full handshakes per second: a new connection, a full handshake with a
#     client certificate (no resumption), one GET, close;
#   - keep-alive requests per second: CONNS connections, GET after GET.
# Then the gateway's CPU per attestation (criterion: verify a pre-made
# evidence with the pinned AK, issue the certificate), unless --no-attest.
# Usage: scripts/bench-gateway.sh [SECONDS] [CONNS] [--no-attest]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
SECONDS_EACH=${1:-10}
CONNS=${2:-32}
ATTEST=yes
for a in "$@"; do [ "$a" = --no-attest ] && ATTEST=no; done
bash scripts/setup.sh >/dev/null
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet -p satchel
cargo build --release --quiet -p gateway --example tls-load
SATCHEL=$PWD/target/release/satchel
LOAD=$PWD/target/release/examples/tls-load
TMP=$(mktemp -d)
GW_PID=
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null || true
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GW_PORT=$(free_port); NGX_PORT=$(free_port)

"$SATCHEL" gateway serve --data "$TMP/gw" --listen "127.0.0.1:$GW_PORT" 2>"$TMP/gw.log" &
GW_PID=$!
for _ in $(seq 100); do
  curl -fsS --cacert "$TMP/gw/ca.crt" "https://127.0.0.1:$GW_PORT/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done
"$SATCHEL" gateway admin-cert --data "$TMP/gw" --name bench --out-dir "$TMP/client" >/dev/null

USER_LINE=; [ "$(id -u)" -eq 0 ] && USER_LINE="user root;"
cat >"$TMP/nginx.conf" <<EOF
$USER_LINE
worker_processes 2;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx-body;
  proxy_temp_path $TMP/nginx-proxy;
  fastcgi_temp_path $TMP/nginx-fastcgi;
  uwsgi_temp_path $TMP/nginx-uwsgi;
  scgi_temp_path $TMP/nginx-scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGX_PORT ssl;
    ssl_certificate $TMP/gw/server.crt;
    ssl_certificate_key $TMP/gw/server.key;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
    ssl_ecdh_curve X25519;
    ssl_session_tickets off;
    ssl_session_cache off;
    ssl_verify_client on;
    ssl_client_certificate $TMP/gw/admin-ca.crt;
    location = /v1/health {
      default_type application/json;
      return 200 '{"status":"ok"}';
    }
  }
}
EOF
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log"
for _ in $(seq 50); do
  curl -fsS --cacert "$TMP/gw/ca.crt" --cert "$TMP/client/bench.crt" --key "$TMP/client/bench.key" \
    "https://127.0.0.1:$NGX_PORT/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done

# Both negotiate the same suite: check it.
for p in "$GW_PORT" "$NGX_PORT"; do
  suite=$(echo | openssl s_client -connect "127.0.0.1:$p" -tls1_3 -CAfile "$TMP/gw/ca.crt" \
    -cert "$TMP/client/bench.crt" -key "$TMP/client/bench.key" 2>/dev/null |
    awk '/^New, TLSv1.3, Cipher is/ { print $NF }')
  echo "port $p negotiates ${suite:-?}"
done

run() { # run PORT MODE -> per_second
  "$LOAD" --url "https://127.0.0.1:$1/v1/health" --ca "$TMP/gw/ca.crt" \
    --cert "$TMP/client/bench.crt" --key "$TMP/client/bench.key" \
    --mode "$2" --conns "$CONNS" --seconds "$SECONDS_EACH"
}
per_second() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(int(d["per_second"]), d["errors"], d["requests"])'; }
# CPU ticks (user + system, 1/100 s) of processes: the gateway, or nginx's master and workers.
ticks() { for p in "$@"; do awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$p/stat"; done | awk '{ t += $1 } END { print t }'; }
nginx_pids() { echo "$(cat "$TMP/nginx.pid") $(pgrep -P "$(cat "$TMP/nginx.pid")" | tr '\n' ' ')"; }

printf '\n%-22s %14s %14s %7s\n' "($SECONDS_EACH s, $CONNS conns)" "satchel" "nginx" "ratio"
for mode in handshake keepalive; do
  g0=$(ticks "$GW_PID")
  read -r g ge greq < <(run "$GW_PORT" "$mode" | per_second)
  g1=$(ticks "$GW_PID")
  # shellcheck disable=SC2046
  n0=$(ticks $(nginx_pids))
  read -r n ne nreq < <(run "$NGX_PORT" "$mode" | per_second)
  # shellcheck disable=SC2046
  n1=$(ticks $(nginx_pids))
  ratio=$(awk -v a="$g" -v b="$n" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }')
  printf '%-22s %12s/s %12s/s %6sx   (errors: %s, %s)\n' "$mode" "$g" "$n" "$ratio" "$ge" "$ne"
  # Server CPU per request (for handshake mode: per full mTLS handshake), in microseconds.
  gc=$(awk -v t=$((g1 - g0)) -v r="$greq" 'BEGIN { printf "%.0f", t * 10000 / (r > 0 ? r : 1) }')
  nc=$(awk -v t=$((n1 - n0)) -v r="$nreq" 'BEGIN { printf "%.0f", t * 10000 / (r > 0 ? r : 1) }')
  cratio=$(awk -v a="$gc" -v b="$nc" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }')
  printf '%-22s %11s µs %11s µs %6sx\n' "  server CPU each" "$gc" "$nc" "$cratio"
done

if [ "$ATTEST" = yes ]; then
  echo
  echo "attestations (CPU per attestation at the gateway, TPM time excluded):"
  cargo bench --quiet -p gateway --bench attest -- --noplot 2>/dev/null |
    grep -E '^gateway_attestation/|time:|thrpt:' | sed 's/^ */  /'
fi
