#!/usr/bin/env bash
# Builds the fuzz targets with cargo-afl and runs each for a bounded time, one after the other,
# then prints per target: executions, corpus size, crashes and hangs (saved, i.e. unique).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 300 seconds, every target)
#
# Needs `cargo install cargo-afl` (it builds AFL++ on first use). Findings stay in
# fuzz/out/<target>/default/{crashes,hangs}; a later run resumes from fuzz/out/<target>.
# Not run in CI: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-300}"
shift || true
all=(request_head parent_reply cache_peer range cache_control client_hello disk_entry ntlm spnego)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

command -v cargo-afl >/dev/null || { echo "cargo-afl missing: cargo install cargo-afl" >&2; exit 1; }
cargo afl build --release --bins

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_AUTORESUME=1
mkdir -p out
for t in "${targets[@]}"; do
    [ -d "seeds/$t" ] || { echo "no seeds/$t: unknown target $t" >&2; exit 1; }
    echo "== $t: ${secs}s"
    cargo afl fuzz -i "seeds/$t" -o "out/$t" -V "$secs" "target/release/$t" >"out/$t.log" 2>&1 ||
        { echo "afl-fuzz failed for $t, see fuzz/out/$t.log" >&2; tail -20 "out/$t.log" >&2; }
done

stat() { sed -n "s/^$2 *: *//p" "out/$1/default/fuzzer_stats" 2>/dev/null | head -1; }
printf '\n%-14s %12s %8s %8s %6s %9s\n' target execs corpus crashes hangs run_time
for t in "${targets[@]}"; do
    printf '%-14s %12s %8s %8s %6s %8ss\n' "$t" "$(stat "$t" execs_done)" \
        "$(stat "$t" corpus_count)" "$(stat "$t" saved_crashes)" "$(stat "$t" saved_hangs)" \
        "$(stat "$t" run_time)"
done
