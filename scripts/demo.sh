#!/usr/bin/env bash
# Satchel's main job end to end, on embedded defaults: a swtpm stands in for
# the client's TPM, SQLite for the database, a local directory for the chunk
# store, and the gateway listens on 127.0.0.1.
#
#   1. build the sample image (examples/image) and sign its reference manifest
#   2. start the gateway and make an enrollment token
#   3. the client measures its boot chain and image layers, enrolls, attests
#   4. pull the image over mTLS, change a user file, push it back
#   5. URLs through the proxy, programs through `satchel run` (and the agent)
#   6. launch the guest through the launch gate: a Debian guest booted in qemu
#      that proves its own boot (as root, with qemu; DEMO_GUEST=0: a stand-in)
#   7. tamper one boot stage: attestation and launch refused, naming it
#   8. verify the audit trail and summarise it
#
# Each step prints one line: what happened and how long it took. Everything
# each command printed is in demo-out/logs/. Any failure stops the run with
# the step, its log and exit 1; everything started is stopped on exit and on
# Ctrl-C. DEMO_VERBOSE=1 also prints every command's output; DEMO_KEEP=1
# keeps the gateway running at the end and prints a web-console sign-in link.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ROOT=$PWD

bash scripts/setup.sh
if [ -n "${SATCHEL_BIN:-}" ]; then
  SATCHEL=$SATCHEL_BIN          # the test suite's own build (satchel/tests/demo.rs)
else
  echo "== building satchel"
  cargo build --quiet -p satchel
  SATCHEL=${CARGO_TARGET_DIR:-$ROOT/target}/debug/satchel
fi

OUT=${DEMO_OUT:-$ROOT/demo-out}
rm -rf "$OUT"; mkdir -p "$OUT/logs"
. scripts/swtpm-lib.sh
GATEWAY_PID=; WEB_PID=; AGENT_PID=; MNT=
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && { kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null; }
  [ -n "$MNT" ] && umount -l "$MNT" 2>/dev/null
  [ -n "$GATEWAY_PID" ] && { kill "$GATEWAY_PID" 2>/dev/null; wait "$GATEWAY_PID" 2>/dev/null; }
  [ -n "$WEB_PID" ] && { kill "$WEB_PID" 2>/dev/null; wait "$WEB_PID" 2>/dev/null; }
  stop_swtpm
}
trap cleanup EXIT
trap 'echo; echo "interrupted: stopping everything"; exit 130' INT TERM
export TSS2_LOG=all+none
T0=$(date +%s.%N)
STEP=0; STEP_T=; LOG=

# begin N TITLE: start a step; its commands log to demo-out/logs/N-*.log.
begin() {
  STEP=$1; STEP_T=$(date +%s.%N); LOG="$OUT/logs/$1-$2.log"; : > "$LOG"
}
# done_ LINE: the step's one line, with its duration.
done_() {
  printf '[%s/8] %s (%.1f s)\n' "$STEP" "$*" "$(echo "$(date +%s.%N) - $STEP_T" | awk '{print $1 - $3}')"
}
fail() {
  echo "[$STEP/8] FAILED: $*" >&2
  echo "--- the end of $LOG:" >&2; tail -n 20 "$LOG" >&2
  exit 1
}
# run CMD...: run, logging stdout and stderr; fail the step if it fails.
run() {
  echo "\$ $*" >> "$LOG"
  if [ "${DEMO_VERBOSE:-}" = 1 ]; then
    "$@" 2>&1 | tee -a "$LOG" || fail "$1 ${2:-} exited non-zero"
  else
    "$@" >> "$LOG" 2>&1 || fail "$1 ${2:-} exited non-zero"
  fi
}
# out CMD...: like run, but also print stdout (for capture).
out() {
  echo "\$ $*" >> "$LOG"
  local o
  o=$("$@" 2>>"$LOG") || { echo "$o" >> "$LOG"; fail "$1 ${2:-} exited non-zero"; }
  echo "$o" >> "$LOG"; [ "${DEMO_VERBOSE:-}" = 1 ] && echo "$o" >&2
  printf '%s' "$o"
}
json() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$1"; }
# same_tree A B: the same files, contents, links and special files (diff
# reads no device node: those are compared by type and number).
same_tree() {
  diff -r --no-dereference --exclude=dev "$1" "$2" >> "$LOG" 2>&1 || return 1
  [ ! -e "$1/dev" ] && [ ! -e "$2/dev" ] && return 0
  diff <(cd "$1/dev" && find . -printf '%p %y %m %U %G\n' -exec stat -c '%t:%T' {} \; | sort) \
       <(cd "$2/dev" && find . -printf '%p %y %m %U %G\n' -exec stat -c '%t:%T' {} \; | sort) >> "$LOG" 2>&1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GW_DATA=$OUT/gw
IMAGE=classroom-2026
# The pushed OS: as root with qemu and debootstrap, a real Debian 12 guest
# (scripts/debian-root.sh --guest, made once and cached), which step 6 boots;
# elsewhere (or DEMO_GUEST=0) the small sample tree and a stand-in guest.
GUEST=0
if [ "$(id -u)" = 0 ] && command -v qemu-system-x86_64 >/dev/null && command -v debootstrap >/dev/null \
   && [ "${DEMO_GUEST:-1}" = 1 ]; then
  GUEST=1
fi
DEVICE=laptop-17

# ---------------------------------------------------------------------------
begin 1 image
run "$SATCHEL" keygen --out "$OUT/org.key"
BASE=examples/image/base-os
if [ "$GUEST" = 1 ]; then
  # The guest's own init runs this once its boot is proved (docs/guest.md).
  BASE=$OUT/guest-root
  run scripts/debian-root.sh --guest "$BASE"
  printf '#!/bin/sh\necho "satchel-guest: hello from the pushed OS, kernel $(uname -r), user files: $(ls /home/Documents | tr "\\n" " ")"\necho "written in the guest" > /home/Documents/from-the-guest\n' \
    > "$BASE/etc/satchel/guest-run"
  chmod 755 "$BASE/etc/satchel/guest-run"
fi
run "$SATCHEL" image build --data "$GW_DATA" --image "$IMAGE" \
  --layer base-os="$BASE" --layer user-data=examples/image/user-data
# The client's boot chain: the sample chain, its stand-in image stage replaced
# by the stages of the image's system layers (PCR 13).
cp -r examples/boot-chain "$OUT/chain"
python3 - "$OUT/chain/chain.toml" <<'PY'
import sys
p = sys.argv[1]; text = open(p).read()
head, *blocks = text.split("[[stage]]")
keep = [b for b in blocks if 'name = "guest-image"' not in b]
open(p, "w").write(head + "".join("[[stage]]" + b for b in keep))
PY
cat "$GW_DATA/images/$IMAGE.stages.toml" >> "$OUT/chain/chain.toml"
run "$SATCHEL" predict --chain "$OUT/chain/chain.toml" --banks sha256 \
  --sign-key "$OUT/org.key" --out "$OUT/reference.json"
STAGES=$(grep -c '^\[\[stage\]\]' "$OUT/chain/chain.toml")
LAYERS=$(out "$SATCHEL" image show --data "$GW_DATA" "$IMAGE" | grep -c ' v1 ')
done_ "image $IMAGE built ($LAYERS layers, chunked into $GW_DATA/chunks); reference manifest for its $STAGES-stage boot chain signed with the organisation's key"

# ---------------------------------------------------------------------------
begin 2 gateway
# The client's TPM, provisioned as a vendor does: an EK certificate from a CA.
TPMDIR="$OUT/swtpm-client"; mkdir -p "$TPMDIR/localca"
printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
  "$TPMDIR/localca" "$TPMDIR/localca" "$TPMDIR/localca" "$TPMDIR/localca" > "$TPMDIR/localca.conf"
printf -- '--platform-manufacturer Satchel\n--platform-version 2.1\n--platform-model swtpm\n' > "$TPMDIR/localca.options"
printf 'create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n' \
  "$TPMDIR/localca.conf" "$TPMDIR/localca.options" > "$TPMDIR/setup.conf"
run swtpm_setup --tpm2 --tpmstate "$TPMDIR" --pcr-banks sha256 --create-ek-cert --config "$TPMDIR/setup.conf" --overwrite
start_swtpm "$TPMDIR" >> "$LOG" 2>&1 || fail "swtpm did not start"
export SATCHEL_TPM=$SWTPM_TCTI
GW_PORT=$(free_port); PROXY_PORT=$(free_port); WEB_PORT=$(free_port)
# A local web server stands in for the web.
mkdir -p "$OUT/web/lessons" "$OUT/web/games"
echo "lesson 1: fractions" > "$OUT/web/lessons/1.txt"; echo "not during class" > "$OUT/web/games/1.txt"
(cd "$OUT/web" && exec python3 -m http.server "$WEB_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
WEB_PID=$!
cp examples/policy/school.csv "$OUT/gateway-policy.csv"
echo "p, group:class-7a, url, http://127.0.0.1:$WEB_PORT/lessons/*, GET, allow" >> "$OUT/gateway-policy.csv"
"$SATCHEL" gateway serve --data "$GW_DATA" --listen "127.0.0.1:$GW_PORT" --proxy-listen "127.0.0.1:$PROXY_PORT" \
  --policy "$OUT/gateway-policy.csv" --ek-ca "$TPMDIR/localca" \
  --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" 2> "$OUT/logs/gateway.log" &
GATEWAY_PID=$!
for _ in $(seq 1 200); do
  curl -sf --cacert "$GW_DATA/ca.crt" "https://127.0.0.1:$GW_PORT/v1/health" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { LOG=$OUT/logs/gateway.log; fail "the gateway exited"; }
  sleep 0.05
done
GW="https://127.0.0.1:$GW_PORT"
# The metrics before the story, read with an admin certificate; step 8 reads
# them again and checks that they moved.
run "$SATCHEL" gateway admin-cert --data "$GW_DATA" --name demo-metrics --out-dir "$OUT/admin"
scrape() {
  curl -fsS --cacert "$GW_DATA/ca.crt" --cert "$OUT/admin/demo-metrics.crt" --key "$OUT/admin/demo-metrics.key" \
    "$GW/v1/admin/metrics" > "$1" 2>>"$LOG"
}
scrape "$OUT/metrics-before.txt" || fail "GET /v1/admin/metrics"
TOKEN=$(out "$SATCHEL" gateway enroll-token --data "$GW_DATA" --device-id "$DEVICE" --groups group:class-7a)
done_ "gateway up on $GW (egress proxy on 127.0.0.1:$PROXY_PORT, SQLite in $GW_DATA); one-time enrollment token made for $DEVICE"

# ---------------------------------------------------------------------------
begin 3 attest
run "$SATCHEL" measure --chain "$OUT/chain/chain.toml" --log "$OUT/boot.log"
# A peer implementation reads the same PCRs: tpm2-tools.
run tpm2_pcrread -T "$SATCHEL_TPM" "sha256:0,4,5,8,9,13" -o "$OUT/pcrs.bin"
CLIENT=(--gateway "$GW" --ca "$GW_DATA/ca.crt" --data "$OUT/client")
run "$SATCHEL" client enroll "${CLIENT[@]}" --device-id "$DEVICE" --token "$TOKEN"
if "$SATCHEL" client enroll "${CLIENT[@]}" --device-id "$DEVICE" --token "$TOKEN" >> "$LOG" 2>&1; then
  fail "a spent token enrolled again"
fi
ATT=$(out "$SATCHEL" client attest "${CLIENT[@]}" --log "$OUT/boot.log")
VALID=$(echo "$ATT" | sed -nE 's/.*\(valid ([0-9]+) s\).*/\1/p')
WHO=$(out curl -sS --cacert "$GW_DATA/ca.crt" --cert "$OUT/client/device.crt" --key "$OUT/client/device.key" "$GW/v1/whoami")
[ "$(echo "$WHO" | json device_id)" = "$DEVICE" ] || fail "whoami did not name $DEVICE: $WHO"
done_ "client measured $STAGES stages into the swtpm, enrolled $DEVICE (EK certificate checked, credential activated; the spent token refused), attested: device certificate valid ${VALID} s, whoami over mTLS answers $DEVICE"

# ---------------------------------------------------------------------------
begin 4 sync
SYNC=(--gateway "$GW" --ca "$GW_DATA/ca.crt" --data "$OUT/client" --image "$IMAGE")
PULL=$(out "$SATCHEL" client sync pull "${SYNC[@]}" --into "$OUT/root" --stats-json)
same_tree "$BASE" "$OUT/root/base-os" || fail "the pulled base-os differs from the image"
echo "my homework, written offline" > "$OUT/root/user-data/Documents/homework.txt"
PUSH=$(out "$SATCHEL" client sync push "${SYNC[@]}" --from "$OUT/root" --json)
echo "tampered" > "$OUT/root/base-os/etc/hostname"
VIOL=$(out "$SATCHEL" client sync push "${SYNC[@]}" --from "$OUT/root" --json)
[ "$(echo "$VIOL" | json violations.base-os.0)" = etc/hostname ] || fail "a base-os change was not reported: $VIOL"
run "$SATCHEL" client sync pull "${SYNC[@]}" --into "$OUT/root"
same_tree "$BASE" "$OUT/root/base-os" || fail "the pull did not restore base-os"
done_ "pulled $IMAGE over mTLS: $(echo "$PULL" | json files_changed) files, $(echo "$PULL" | json chunks_fetched) chunks, $(echo "$PULL" | json bytes_received) bytes in; pushed Documents/homework.txt: user-data v$(echo "$PUSH" | json layers.user-data) on the gateway ($(echo "$PUSH" | json bytes_sent) bytes out); a base-os edit refused, reported and restored by the next pull"

# ---------------------------------------------------------------------------
begin 5 policy
PROXY=(-x "https://127.0.0.1:$PROXY_PORT" --proxy-cacert "$GW_DATA/ca.crt"
  --proxy-cert "$OUT/client/device.crt" --proxy-key "$OUT/client/device.key")
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$WEB_PORT/lessons/1.txt" >/dev/null && break; sleep 0.1; done
ALLOWED=$(out curl -sS "${PROXY[@]}" -o "$OUT/allowed.txt" -w '%{http_code}' "http://127.0.0.1:$WEB_PORT/lessons/1.txt")
DENIED=$(out curl -sS "${PROXY[@]}" -o "$OUT/denied.json" -w '%{http_code}' "http://127.0.0.1:$WEB_PORT/games/1.txt")
cat "$OUT/denied.json" >> "$LOG"
[ "$ALLOWED" = 200 ] && [ "$DENIED" = 403 ] || fail "proxy: allowed $ALLOWED, denied $DENIED"
WHY=$(json detail < "$OUT/denied.json")
run "$SATCHEL" policy bundle --policy examples/policy/school.csv --sign-key "$OUT/org.key" --version 1 --out "$OUT/policy.bundle"
RUNARGS=(--bundle "$OUT/policy.bundle" --bundle-key "$OUT/org.key.pub" --subject "device:$DEVICE")
run "$SATCHEL" run "${RUNARGS[@]}" -- /usr/bin/env true
printf '#!/bin/sh\necho "this must not run"\n' > "$OUT/not-allowlisted.sh"; chmod +x "$OUT/not-allowlisted.sh"
set +e; "$SATCHEL" run "${RUNARGS[@]}" -- "$OUT/not-allowlisted.sh" >> "$LOG" 2>&1; RC=$?; set -e
[ "$RC" = 126 ] || fail "a program outside the allowlist was not refused (exit $RC)"
AGENT_LINE="agent: skipped (needs root for fanotify)"
if [ "$(id -u)" -eq 0 ]; then
  # The agent decides every exec on a dedicated tmpfs (never the machine's own mounts).
  MNT=$OUT/agent-mnt; mkdir -p "$MNT"
  if mount -t tmpfs -o size=16m tmpfs "$MNT" 2>>"$LOG"; then
    cp /bin/echo "$MNT/lesson-app"; cp /bin/ls "$MNT/game"
    { cat examples/policy/school.csv
      echo "p, group:class-7a, app, sha256:$(sha256sum "$MNT/lesson-app" | cut -d' ' -f1), exec, allow"; } > "$OUT/agent-policy.csv"
    run "$SATCHEL" policy bundle --policy "$OUT/agent-policy.csv" --sign-key "$OUT/org.key" --version 2 --out "$OUT/agent.bundle"
    "$SATCHEL" agent --bundle "$OUT/agent.bundle" --bundle-key "$OUT/org.key.pub" --subject "device:$DEVICE" \
      --mount "$MNT" --state-dir "$OUT/agent-state" "${CLIENT[@]}" --deliver-interval 1s 2> "$OUT/logs/agent.log" &
    AGENT_PID=$!
    for i in $(seq 1 200); do
      grep -qs "\"pid\": $AGENT_PID," "$OUT/agent-state/status.json" && break
      kill -0 "$AGENT_PID" 2>/dev/null && [ "$i" -lt 200 ] || { LOG=$OUT/logs/agent.log; fail "the agent did not start"; }
      sleep 0.05
    done
    run "$MNT/lesson-app" "lesson app ran"
    if "$MNT/game" >> "$LOG" 2>&1; then fail "the agent let a program outside the allowlist run"; fi
    grep -q "Operation not permitted" "$LOG" || fail "the refused exec did not fail with EPERM"
    DRAINED=
    for _ in $(seq 1 100); do
      [ "$("$SATCHEL" agent status --state-dir "$OUT/agent-state" --json | json spool_waiting)" = 0 ] && { DRAINED=1; break; }
      sleep 0.1
    done
    [ -n "$DRAINED" ] || fail "the agent's audit spool did not reach the gateway"
    kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
    umount -l "$MNT"; MNT=
    AGENT_LINE="agent (fanotify on a tmpfs): lesson-app ran, game refused with EPERM, its audit spool delivered to the gateway"
  else
    AGENT_LINE="agent: skipped (no tmpfs mount here)"
  fi
fi
done_ "proxy: /lessons/1.txt allowed (200), /games/1.txt denied (403: $WHY); satchel run: /usr/bin/env ran, not-allowlisted.sh refused (exit 126); $AGENT_LINE"

# ---------------------------------------------------------------------------
begin 6 launch
head -c 32 /dev/urandom > "$OUT/disk.key"
run "$SATCHEL" seal --pcrs 4,8,9,13 --in "$OUT/disk.key" --out "$OUT/disk.sealed"
GATE="launch gate: log replayed = TPM PCRs = reference, disk key unsealed (PCRs 4,8,9,13; launch PCR 15 closed after, so this boot cannot unseal it again)"
if [ "$GUEST" = 1 ]; then
  # The real guest (docs/guest.md): the base-os layer pulled through the gateway
  # at step 4 is its system disk, the user-data layer its /home; its boot is
  # measured by OVMF into its own vTPM and proved before it runs.
  run "$SATCHEL" guest reference --root "$OUT/root/base-os" --state "$OUT/guest-ref-state" \
    --sign-key "$OUT/org.key" --out "$OUT/guest-reference.json" -q
  SAID=$(out "$SATCHEL" launch --log "$OUT/boot.log" --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" \
    --sealed "$OUT/disk.sealed" -- "$SATCHEL" guest start --root "$OUT/root/base-os" --user "$OUT/root/user-data" \
    --state "$OUT/guest" --reference "$OUT/guest-reference.json" --reference-key "$OUT/org.key.pub")
  [ -f "$OUT/root/user-data/Documents/from-the-guest" ] || fail "what the guest wrote did not come back to the user tree"
  BACK=$(out "$SATCHEL" client sync push "${SYNC[@]}" --from "$OUT/root" --json)
  SAID=$(grep -a "satchel-guest: hello from" "$LOG" | tail -1 | sed 's/.*satchel-guest: //')
  done_ "$GATE; the pulled image booted in qemu and proved its own boot; the guest said: \"$SAID\"; what it wrote came back and checked in (user-data v$(echo "$BACK" | json layers.user-data))"
else
  SAID=$(out "$SATCHEL" launch --log "$OUT/boot.log" --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" \
    --sealed "$OUT/disk.sealed" -- sh -c 'echo "guest started with a $(wc -c < "$SATCHEL_KEY_FILE")-byte disk key from an in-memory file"')
  done_ "$GATE; the guest said: \"$SAID\" (a stand-in: the real guest needs root, qemu and debootstrap)"
fi

# ---------------------------------------------------------------------------
begin 7 tamper
# The same device reboots with one byte of its hypervisor changed.
cp -r "$OUT/chain" "$OUT/chain-tampered"
printf 'X' | dd of="$OUT/chain-tampered/hypervisor.bin" bs=1 seek=0 conv=notrunc status=none
stop_swtpm
start_swtpm "$TPMDIR" >> "$LOG" 2>&1 || fail "swtpm did not restart"
export SATCHEL_TPM=$SWTPM_TCTI
run "$SATCHEL" measure --chain "$OUT/chain-tampered/chain.toml" --log "$OUT/boot-tampered.log"
set +e
"$SATCHEL" client attest "${CLIENT[@]}" --log "$OUT/boot-tampered.log" > "$OUT/attest-tampered.txt" 2>&1; ATT_RC=$?
"$SATCHEL" launch --log "$OUT/boot-tampered.log" --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" \
  --sealed "$OUT/disk.sealed" -- sh -c 'echo "guest started (this must not happen)"' > "$OUT/launch-tampered.txt" 2>&1; LAUNCH_RC=$?
set -e
cat "$OUT/attest-tampered.txt" "$OUT/launch-tampered.txt" >> "$LOG"
[ "$ATT_RC" = 1 ] && [ "$LAUNCH_RC" = 1 ] || fail "a tampered boot was not refused (attest $ATT_RC, launch $LAUNCH_RC)"
grep -q "hypervisor" "$OUT/launch-tampered.txt" || fail "the launch gate did not name the stage"
grep -q "PCR 8" "$OUT/attest-tampered.txt" || fail "the gateway did not name PCR 8"
grep -q "must not happen" "$OUT/launch-tampered.txt" && fail "the guest started on a tampered boot"
ATT_WHY=$(grep -m1 -o "stage hypervisor[^;]*\|PCR 8[^;]*" "$OUT/attest-tampered.txt" | head -1)
done_ "one byte of the hypervisor changed: the gateway refused attestation ($ATT_WHY) and the launch gate refused the guest (stage hypervisor); no certificate, no disk key"

# ---------------------------------------------------------------------------
begin 8 audit
GW_DB="sqlite:$GW_DATA/satchel.db"
run "$SATCHEL" audit checkpoint --db "$GW_DB" --key "$GW_DATA/audit.key" --origin satchel.gateway.audit
run "$SATCHEL" audit verify --db "$GW_DB" --pubkey "$GW_DATA/audit.key.pub" --origin satchel.gateway.audit
"$SATCHEL" audit list --db "$GW_DB" --json > "$OUT/audit.jsonl" 2>>"$LOG" || fail "audit list"
SUMMARY=$(python3 - "$OUT/audit.jsonl" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
c = collections.Counter(f'{r["kind"]} {r["decision"]}' for r in rows)
print(f"{len(rows)} entries: " + ", ".join(f"{k} {n}" for k, n in sorted(c.items())))
PY
)
# The same story in the gateway's Prometheus metrics, parsed by Prometheus' own
# OpenMetrics parser (python3-prometheus-client): every counter the story
# touches moved since the scrape at step 2.
scrape "$OUT/metrics.txt" || fail "GET /v1/admin/metrics"
METRICS=$(/usr/bin/python3 - "$OUT/metrics-before.txt" "$OUT/metrics.txt" <<'PY' 2>>"$LOG"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse
def read(path):
    got = {}
    for fam in parse(open(path).read()):
        for s in fam.samples:
            key = s.name + "".join(f" {k}={v}" for k, v in sorted(s.labels.items()))
            got[key] = s.value
    return got
before, after = read(sys.argv[1]), read(sys.argv[2])
def moved(name, **labels):
    key = name + "".join(f" {k}={v}" for k, v in sorted(labels.items()))
    d = after.get(key, 0) - before.get(key, 0)
    if d <= 0:
        sys.exit(f"{key} did not move ({before.get(key, 0)} -> {after.get(key, 0)})")
    return int(d)
a = moved("satchel_audit_entries_total", kind="attestation", decision="trusted")
n = moved("satchel_audit_entries_total", kind="attestation", decision="not-trusted")
pa = moved("satchel_audit_entries_total", kind="proxy", decision="allow")
pd = moved("satchel_audit_entries_total", kind="proxy", decision="deny")
print(f"since step 2: attestations trusted +{a}, not trusted +{n}; proxy allow +{pa}, deny +{pd}")
PY
) || fail "the metrics did not parse or did not move"
# The same fleet in the web console, signed in with a one-time link: the
# device's last attestation (the tampered boot) names its failing check.
LINK=$("$SATCHEL" gateway console-link --data "$GW_DATA" --name demo --url "$GW" 2>>"$LOG") \
  || fail "console-link"
curl -fsS --cacert "$GW_DATA/ca.crt" -c "$OUT/console.jar" -o /dev/null "$LINK" 2>>"$LOG" \
  || fail "signing in to the console"
curl -fsS --cacert "$GW_DATA/ca.crt" -b "$OUT/console.jar" "$GW/console/" > "$OUT/console.html" 2>>"$LOG" \
  || fail "GET /console/"
grep -q "laptop-17" "$OUT/console.html" && grep -q "not-trusted" "$OUT/console.html" \
  || fail "the console's fleet page does not show laptop-17's refused attestation"
done_ "the gateway's audit trail verifies (every leaf, the tree, every signed checkpoint): $SUMMARY; metrics (GET /v1/admin/metrics): $METRICS; the web console ($GW/console/) shows laptop-17's last attestation refused"

printf '\nall 8 steps passed in %.0f s; outputs in %s, every command'"'"'s log in %s/logs\n' \
  "$(echo "$(date +%s.%N) - $T0" | awk '{print $1 - $3}')" "$OUT" "$OUT"
if [ -n "${DEMO_KEEP:-}" ]; then
  LINK=$("$SATCHEL" gateway console-link --data "$GW_DATA" --name demo --url "$GW" 2>>"$LOG")
  printf '\nthe gateway keeps running (DEMO_KEEP): web console %s/console/\n' "$GW"
  printf 'sign in within 15 minutes with %s\n' "$LINK"
  printf '(the browser must trust %s; Ctrl-C stops everything)\n' "$GW_DATA/ca.crt"
  wait "$GATEWAY_PID"
fi
