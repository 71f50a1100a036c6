#!/usr/bin/env bash
# libFuzzer harnesses for every reader of outside bytes (Fuzz/<name>.swift); see docs/RELIABILITY.md.
#
#   scripts/fuzz.sh build [name...]         build the harnesses (default: every one whose file exists; incremental)
#   scripts/fuzz.sh run <name|all> [secs]   fuzz one harness, or each in turn, for secs seconds (default 600)
#   scripts/fuzz.sh repro <name> <file>...  run inputs (a saved crash, a regression case) through a harness
#   scripts/fuzz.sh seeds                   rewrite the seed corpus Fuzz/corpus/ from our own writers
#
# Everything built or found goes under Fuzz/.build (ignored by git, or $FUZZ_BUILD_DIR): bin/, the
# working corpus each run grows (corpus/<name>; the committed seeds in Fuzz/corpus/<name> are only read),
# crashes, hangs and OOM inputs (crashes/<name>/), and one log per run (logs/).
#
# One fuzzer process at a time, single-threaded (no -jobs / -workers): the machine is shared.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/Fuzz/.build}
SWIFTC=${SWIFTC:-swiftc}

# Every module and every harness gets the same instrumentation: coverage for libFuzzer, AddressSanitizer
# for out-of-bounds and use-after-free, line tables for readable stack traces. -enable-testing lets
# harnesses reach internal helpers (chunk and header parsers) through @testable import.
FLAGS=(-O -gline-tables-only -swift-version 5 -sanitize=fuzzer,address -parse-as-library -enable-testing)

HARNESSES=(safetensors npy png json pointfile idx gzip inception zip pickle)

# The package's modules that each harness links, dependencies included.
harness_modules() {
  case $1 in
    safetensors | json) echo "Formats TensorCore NN Data Eval Distributed TVM" ;;
    npy | png | pointfile | zip) echo "Formats" ;;
    idx | gzip) echo "Formats TensorCore Data" ;;
    inception) echo "Formats TensorCore Data Eval" ;;
    pickle) echo "Formats TensorCore NN" ;;
    *) echo "unknown harness '$1' (known: ${HARNESSES[*]})" >&2; exit 2 ;;
  esac
}

# Largest input libFuzzer makes: room for the biggest seed (a whole tiny-DiT checkpoint for
# safetensors), small enough that each execution stays fast.
max_len() {
  case $1 in
    safetensors | inception | pickle) echo 32768 ;;
    png | gzip) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

module_deps() {
  case $1 in
    Formats | TensorCore) echo "" ;;
    NN | Data) echo "TensorCore Formats" ;;
    Eval) echo "TensorCore Formats Data" ;;
    Distributed) echo "TensorCore" ;;
    TVM) echo "TensorCore NN Data Eval Formats Distributed" ;;
  esac
}

# Builds Sources/<module> into one object file and a .swiftmodule, unless neither its sources nor its
# dependencies changed since the last build.
build_module() {
  local m=$1 obj=$BUILD/obj/$1.o dep
  for dep in $(module_deps "$m"); do build_module "$dep" || return 1; done
  if [[ -f $obj ]] && [[ -z $(find "$ROOT/Sources/$m" -name '*.swift' -newer "$obj" | head -1) ]]; then
    local stale=""
    for dep in $(module_deps "$m"); do [[ $BUILD/obj/$dep.o -nt $obj ]] && stale=1; done
    [[ -z $stale ]] && return 0
  fi
  echo "building module $m" >&2
  mkdir -p "$BUILD/obj" "$BUILD/modules"
  local sources
  mapfile -t sources < <(find "$ROOT/Sources/$m" -name '*.swift' | sort)
  "$SWIFTC" "${FLAGS[@]}" -wmo -module-name "$m" -I "$BUILD/modules" -emit-object -o "$obj" \
    -emit-module -emit-module-path "$BUILD/modules/$m.swiftmodule" "${sources[@]}" || { rm -f "$obj"; return 1; }
  # The compiler leaves an output that came out identical untouched; its time must still say "built now".
  touch "$obj"
}

harness_exists() {
  [[ -f $ROOT/Fuzz/$1.swift ]] && return 0
  echo "skipping $1: Fuzz/$1.swift does not exist yet" >&2
  return 1
}

# Build steps return their status explicitly: they also run where `set -e` is suspended (`f || ...`).
build_harness() {
  local name=$1 m objs=() bin=$BUILD/bin/fuzz-$1
  for m in $(harness_modules "$name"); do build_module "$m" || return 1; objs+=("$BUILD/obj/$m.o"); done
  local newest=$ROOT/Fuzz/$name.swift f
  for f in "$ROOT/Fuzz/Support.swift" "${objs[@]}"; do [[ $f -nt $newest ]] && newest=$f; done
  [[ -f $bin && $bin -nt $newest ]] && return 0
  echo "building harness $name" >&2
  mkdir -p "$BUILD/bin"
  "$SWIFTC" "${FLAGS[@]}" -module-name "fuzz_$name" -I "$BUILD/modules" -use-ld=lld \
    "$ROOT/Fuzz/Support.swift" "$ROOT/Fuzz/$name.swift" "${objs[@]}" -o "$bin" || { rm -f "$bin"; return 1; }
}

# The Swift runtime's own crash backtracer would take the signal before libFuzzer saves the input.
fuzzer_env() {
  export SWIFT_BACKTRACE=enable=no
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0}
}

run_harness() {
  local name=$1 secs=$2
  harness_exists "$name" || return 0
  build_harness "$name" || return 1
  local corpus=$BUILD/corpus/$name crashes=$BUILD/crashes/$name/ seeds=$ROOT/Fuzz/corpus/$name
  local log=$BUILD/logs/$name-$(date -u +%Y%m%dT%H%M%SZ).log dict=()
  mkdir -p "$corpus" "$crashes" "$seeds" "$BUILD/logs"
  [[ -f $ROOT/Fuzz/dict/$name.dict ]] && dict=(-dict="$ROOT/Fuzz/dict/$name.dict")
  fuzzer_env
  echo "fuzzing $name for ${secs}s; log $log" >&2
  # -rss_limit_mb bounds the whole process; -malloc_limit_mb flags any single allocation above 512 MB,
  # which no input of at most max_len bytes justifies: that is a header's claim being believed.
  set +e
  "$BUILD/bin/fuzz-$name" -max_total_time="$secs" -max_len="$(max_len "$name")" \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$crashes" "${dict[@]}" "$corpus" "$seeds" > "$log" 2>&1
  local rc=$?
  set -e
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::|ERROR|SUMMARY' "$log" >&2 || true
  [[ $rc -eq 0 ]] || echo "fuzz-$name stopped with status $rc: see $log and $crashes" >&2
  return $rc
}

cmd=${1:-}
case $cmd in
  build)
    shift
    [[ $# -gt 0 ]] || set -- "${HARNESSES[@]}"
    for h in "$@"; do
      harness_modules "$h" > /dev/null
      if harness_exists "$h"; then build_harness "$h"; fi
    done ;;
  run)
    target=${2:?usage: fuzz.sh run <name|all> [seconds]}
    secs=${3:-600}
    if [[ $target == all ]]; then
      status=0
      for h in "${HARNESSES[@]}"; do run_harness "$h" "$secs" || status=1; done
      exit $status
    fi
    harness_modules "$target" > /dev/null
    run_harness "$target" "$secs" ;;
  repro)
    name=${2:?usage: fuzz.sh repro <name> <file>...}
    shift 2
    harness_exists "$name" || exit 2
    build_harness "$name"
    fuzzer_env
    "$BUILD/bin/fuzz-$name" "$@" ;;
  seeds)
    for m in Formats TensorCore NN Data Eval Distributed TVM; do build_module "$m" || exit 1; done
    mkdir -p "$BUILD/bin"
    # Not a fuzzer: the instrumented modules only need libFuzzer's callbacks, not its main().
    runtime=$(dirname "$(command -v "$SWIFTC")")/../lib/clang
    "$SWIFTC" -O -swift-version 5 -sanitize=address -I "$BUILD/modules" -use-ld=lld \
      "$ROOT/Fuzz/Seeds/main.swift" "$BUILD"/obj/{Formats,TensorCore,NN,Data,Eval,Distributed,TVM}.o \
      "$(find "$runtime" -name 'libclang_rt.fuzzer_no_main-x86_64.a' | head -1)" -lstdc++ -o "$BUILD/bin/make-seeds"
    fuzzer_env
    "$BUILD/bin/make-seeds" "$ROOT/Fuzz/corpus" ;;
  *)
    sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2 ;;
esac
