# Sourced by the project's scripts: put a Rust toolchain on PATH when it is
# installed in the usual places but not on PATH (a fresh login shell as root).
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
  if [ -x "$d/cargo" ] && ! command -v cargo >/dev/null 2>&1; then
    export PATH="$d:$PATH"
  fi
done
