#!/usr/bin/env bash
# Packages the release binaries for shipping: dist/sesam-<version>-<arch>-linux/
# with stripped binaries (debug info split into .debug files beside them, linked
# by .gnu_debuglink so gdb and backtrace tools still find it), the systemd units
# and the example configuration, then a .tar.gz of it. Uses the shared build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build "${SESAM_BUILD_ARGS[@]}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name="sesam-${version}-$(uname -m)-linux"
out="dist/$name"
rm -rf "$out" && mkdir -p "$out/bin" "$out/debug" "$out/systemd"
for bin in sesam-collector sesam-node sesam-shipper sesam-metrics-agent sesam-stack; do
  src="$CARGO_TARGET_DIR/release/$bin"
  objcopy --only-keep-debug "$src" "$out/debug/$bin.debug"
  objcopy --strip-debug --add-gnu-debuglink="$out/debug/$bin.debug" "$src" "$out/bin/$bin"
  chmod 0755 "$out/bin/$bin"
done
cp deploy/systemd/*.service "$out/systemd/"
cp node/examples/config.json "$out/node-config.example.json"
tar -C dist -czf "dist/$name.tar.gz" "$name"
echo "dist: dist/$name.tar.gz"
ls -l "$out/bin" | awk 'NR>1 {printf "  %-22s %6.1f MiB\n", $9, $5/1048576}'
