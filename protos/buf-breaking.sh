#!/usr/bin/env bash
# `buf breaking` for protos/ against the commit this tree should stay compatible with:
#  - on a branch: its merge base with main, so only the branch's own changes are judged (a branch
#    that is merely behind main must not look as if it deleted what main added since);
#  - on main itself (or where main is HEAD, as in CI's fresh clone of main): HEAD when protos/ has
#    uncommitted changes, else HEAD~1, so the last commit is checked;
#  - BUF_AGAINST=<git ref> overrides the choice.
# With no git history to compare with (an exported tarball, a single-commit clone) it says so and
# passes: there is no published API to break.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=${BUF:-node_modules/.bin/buf}

commit() { git rev-parse -q --verify "$1^{commit}" 2>/dev/null; }

if ! git rev-parse -q --git-dir >/dev/null 2>&1; then
    echo "buf breaking: not a git checkout, nothing to compare with"
    exit 0
fi
head=$(commit HEAD)
against=""
if [ -n "${BUF_AGAINST:-}" ]; then
    against=$(commit "$BUF_AGAINST")
elif main=$(commit refs/heads/main || commit refs/remotes/origin/main); then
    against=$(git merge-base "$head" "$main")
fi
if [ -z "$against" ] || [ "$against" = "$head" ]; then
    if ! git diff --quiet HEAD -- protos; then
        against=$head
    elif ! against=$(commit HEAD~1); then
        echo "buf breaking: HEAD has no parent, nothing to compare with"
        exit 0
    fi
fi
echo "buf breaking against $(git log -1 --format='%h %s' "$against" | cut -c1-72)"
exec "$buf" breaking --against ".git#ref=$against,subdir=protos"
