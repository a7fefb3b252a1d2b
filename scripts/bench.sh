#!/usr/bin/env bash
# Kept for habit: the benchmarks live in bench/ (see bench/run.sh).
exec "$(dirname "$0")/../bench/run.sh" "$@"
