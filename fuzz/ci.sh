#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time; exits non-zero on any crash,
# failed assertion, timeout or out-of-memory. Called by .ci/run; also runnable on its own:
#
#   fuzz/ci.sh                          # every target in `cargo fuzz list`, 60 s each
#   FUZZ_SECONDS=10 fuzz/ci.sh detect   # chosen targets, 10 s each
#   CARGO_LOCK=/tmp/cargo.lock fuzz/ci.sh   # serialise the build with other cargo runs
#
# A new target only needs its [[bin]] in fuzz/Cargo.toml (and, if it has one, a seed corpus in
# fuzz/corpus/<target>/): `cargo fuzz list` names it and this loop runs it.
#
# Stable Rust, so `--sanitizer none` (see fuzz/README.md): panics and failed assertions are
# still crashes. Inputs found during the run go to a temporary directory, never into the
# repository's corpus, so CI leaves the tree clean; a crashing input is kept in
# fuzz/artifacts/<target>/ (git-ignored) and printed in base64.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${FUZZ_SECONDS:-60}"

cargo_() {
    if [[ -n "${CARGO_LOCK:-}" ]]; then
        flock "$CARGO_LOCK" cargo "$@"
    else
        cargo "$@"
    fi
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: installing it"
    cargo_ install cargo-fuzz --locked
fi
cargo fuzz --version

host="$(rustc -vV | sed -n 's/^host: //p')"
started=$SECONDS
# Built once, under the lock; the fuzzers then run without holding it.
cargo_ fuzz build --sanitizer none --target "$host"
echo "fuzz targets built in $((SECONDS - started))s"

if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if ((${#targets[@]} == 0)); then
    echo "no fuzz targets found" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/mesh-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=()
for t in "${targets[@]}"; do
    bin="target/$host/release/$t"
    if [[ ! -x "$bin" ]]; then
        echo "fuzz target $t: binary $bin was not built" >&2
        failed+=("$t")
        continue
    fi
    mkdir -p "$work/corpus/$t" "artifacts/$t"
    corpora=("$work/corpus/$t")  # first directory: where new inputs go
    if [[ -d "corpus/$t" ]]; then
        corpora+=("corpus/$t")  # the repository's seeds, read only
    fi
    log="$work/$t.log"
    t0=$SECONDS
    status=0
    # -timeout: one input taking 10 s is a hang, a failure; -rss_limit_mb: libFuzzer's default.
    "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "${corpora[@]}" >"$log" 2>&1 || status=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
    if ((status == 0)); then
        echo "fuzz target $t: ok, ${runs:-?} runs in $((SECONDS - t0))s (${cov:-cov: ?}), $(find "$work/corpus/$t" -type f | wc -l) new inputs"
    else
        echo "fuzz target $t: FAILED (exit $status) after $((SECONDS - t0))s; end of its log:" >&2
        tail -n 40 "$log" >&2
        for a in $(grep -o "artifacts/$t/[a-z-]*-[0-9a-f]*" "$log" | sort -u); do
            echo "input $a (base64; reproduce with: cargo fuzz run $t --sanitizer none fuzz/$a):" >&2
            base64 "$a" | head -c 4000 >&2
            echo >&2
        done
        failed+=("$t")
    fi
done

echo "fuzz step: ${#targets[@]} targets, ${seconds}s each, $((SECONDS - started))s in all"
if ((${#failed[@]})); then
    echo "fuzz step FAILED: ${failed[*]}" >&2
    exit 1
fi
