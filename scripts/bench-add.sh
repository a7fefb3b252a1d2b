#!/usr/bin/env bash
# Kept for habit: ADD/DEL through the shim and the daemon is now part of
# `bench/run.sh pods` (with the bridge plugin in front and 50 pods at once).
exec "$(dirname "$0")/../bench/run.sh" pods "$@"
