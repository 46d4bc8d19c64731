# Shell helpers shared by the demo and bench scripts: start a swtpm on a free
# port pair in a private state dir; stop it on exit. Source, don't run.

# start_swtpm DIR: sets SWTPM_PID and SWTPM_TCTI. Retries on a port clash.
start_swtpm() {
  local dir=$1 port try
  mkdir -p "$dir"
  for try in $(seq 1 20); do
    port=$(( 20000 + (RANDOM % 20000) * 2 ))
    swtpm socket --tpm2 --tpmstate dir="$dir" \
      --server type=tcp,port="$port" --ctrl type=tcp,port=$((port + 1)) \
      --flags not-need-init,startup-clear >"$dir/swtpm.log" 2>&1 &
    SWTPM_PID=$!
    for _ in $(seq 1 50); do
      if ! kill -0 "$SWTPM_PID" 2>/dev/null; then break; fi
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        SWTPM_TCTI="swtpm:host=127.0.0.1,port=$port"
        return 0
      fi
      sleep 0.05
    done
    kill "$SWTPM_PID" 2>/dev/null || true
    wait "$SWTPM_PID" 2>/dev/null || true
  done
  echo "could not start swtpm; its last words:" >&2
  cat "$dir/swtpm.log" >&2
  return 1
}

stop_swtpm() {
  if [ -n "${SWTPM_PID:-}" ]; then
    kill "$SWTPM_PID" 2>/dev/null || true
    wait "$SWTPM_PID" 2>/dev/null || true
    SWTPM_PID=
  fi
}
