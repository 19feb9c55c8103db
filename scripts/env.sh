# Sourced by the project's scripts and .ci/run: one build directory for
# everything (the stack, the tests, clippy, benchmarks, release packaging), kept
# outside the checkout so that it survives fresh clones. RocksDB's C++ is
# compiled once per machine (about 17 minutes cold on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sesam-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The cargo arguments every build of this project uses, so that the stack,
# the tests and the packaging resolve the same feature set and share every
# artifact (a narrower `cargo build -p X` may unify features differently and
# rebuild RocksDB's bindings).
SESAM_BUILD_ARGS=(--release --workspace --bins --tests --locked)
