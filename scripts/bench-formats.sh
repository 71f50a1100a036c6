#!/usr/bin/env bash
# Times PNG writing/reading and Fashion-MNIST (gzip IDX) loading for one or more source trees, each run in
# turn ROUNDS times (default 5) so that a busy shared machine slows all of them alike:
#   scripts/bench-formats.sh [TREE...]     (default: this checkout; e.g. a `git archive` of an older commit)
# Each tree's Sources/Formats is built as a module and scripts/bench_formats.swift with that tree's
# Sources/Data/{Gzip,IDX}.swift on top, with the same flags as a release build (-O, whole module).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-/tmp/bench-formats}
[[ $# -gt 0 ]] || set -- "$ROOT"
bins=()
for tree in "$@"; do
    tree=$(cd "$tree" && pwd)
    out=$BUILD/$(echo "$tree" | tr '/' '_')
    mkdir -p "$out"
    swiftc -O -wmo -parse-as-library -module-name Formats -emit-module -emit-module-path "$out/Formats.swiftmodule" \
        -emit-object -o "$out/Formats.o" "$tree"/Sources/Formats/*.swift
    swiftc -O -wmo -parse-as-library -module-name bench -I "$out" "$ROOT/scripts/bench_formats.swift" "$tree/Sources/Data/Gzip.swift" \
        "$tree/Sources/Data/IDX.swift" "$out/Formats.o" -o "$out/bench"
    bins+=("$tree|$out/bench")
done
for round in $(seq "${ROUNDS:-5}"); do
    for entry in "${bins[@]}"; do
        echo "== round $round: ${entry%%|*}"
        "${entry##*|}" ${DATA_DIR:+"$DATA_DIR"}
    done
done
