#!/usr/bin/env bash
# Mints an auth key on the running test bed's rscale and prints only the key.
#
#   scripts/testbed-mint-key.sh [--reusable] [--ephemeral] [--tag tag:NAME]...
#
# Same as `scripts/testbed.sh mint`; honours TAILNET_TESTBED_DIR.
set -euo pipefail
exec "$(dirname "$0")/testbed.sh" mint "$@"
