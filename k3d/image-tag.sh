#!/usr/bin/env bash
# Prints the image tag for the source tree at DIR (default: this checkout):
# `src-` and the start of the git tree hash of every file git does not
# ignore, committed or not. Any change gives a new tag, so the cluster never
# keeps running an older image under a tag it already has; the same tree
# gives the same tag. Outside a git checkout every build gets a new tag.
#
# Usage: k3d/image-tag.sh [DIR]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "build-$(date -u +%Y%m%d%H%M%S)"
  exit 0
fi
cd "$(git rev-parse --show-toplevel)"

# A private index: staging everything there leaves the real index alone.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export GIT_INDEX_FILE="$scratch/index"
index=$(git rev-parse --git-path index)
# Starting from the real index reuses its file stat cache.
if [[ -f $index ]]; then cp "$index" "$GIT_INDEX_FILE"; fi
git add --all -- .
tree=$(git write-tree)
echo "src-${tree:0:12}"
