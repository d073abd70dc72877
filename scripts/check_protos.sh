#!/usr/bin/env bash
# Check the gRPC contract (protos/phoenix/v1), as CI does:
#   1. buf lint        (STANDARD + COMMENTS rules, see buf.yaml)
#   2. buf breaking    against the previous commit (FILE rules), so the contract
#                      never breaks by accident; skipped, with the reason, when
#                      there is no previous commit with protos
#   3. stubs are fresh (python scripts/gen_protos.py --check)
#
# Environment:
#   PYTHON          Python with the dev tools (default .venv/bin/python)
#   BUF             buf command (default: npx --yes @bufbuild/buf@1.75.0)
#   PROTO_BASE_REF  git revision to compare against (default HEAD~1)
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
BUF="${BUF:-npx --yes @bufbuild/buf@1.75.0}"
BASE_REF="${PROTO_BASE_REF:-HEAD~1}"

step() { printf '==> %s\n' "$*"; }

step "buf lint"
# shellcheck disable=SC2086  # BUF may be a command with arguments
$BUF lint
echo "lint: ok"

step "buf breaking against ${BASE_REF}"
skip_reason=""
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  skip_reason="this is not a git work tree"
elif ! base_sha="$(git rev-parse --verify --quiet "${BASE_REF}^{commit}")"; then
  skip_reason="${BASE_REF} does not exist (the first commit, or a shallow clone: fetch with --depth=2 or more)"
elif ! git ls-tree -r --name-only "${base_sha}" -- protos | grep -q '\.proto$'; then
  skip_reason="${BASE_REF} has no .proto files under protos/ (the contract is new)"
fi
if [[ -n "${skip_reason}" ]]; then
  echo "breaking: SKIPPED because ${skip_reason}"
else
  # subdir=protos reads the old module from protos/ whether or not the old
  # commit had a buf.yaml.
  # shellcheck disable=SC2086
  $BUF breaking --against ".git#ref=${base_sha},subdir=protos"
  echo "breaking: ok (no breaking change since ${BASE_REF} = ${base_sha:0:12})"
fi

step "generated stubs are fresh"
"${PYTHON}" scripts/gen_protos.py --check
