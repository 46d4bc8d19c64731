# Sourced by the project's scripts: put a Rust toolchain on PATH when it is
# installed in the usual places but not on PATH (a fresh login shell as root).
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
  if [ -x "$d/cargo" ] && ! command -v cargo >/dev/null 2>&1; then
    export PATH="$d:$PATH"
  fi
done

# CI builds once from a clean clone: incremental state is only disk there
# (it doubles the target directory).
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi
