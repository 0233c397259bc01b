#!/usr/bin/env bash
# suite.sh VERSION [PYTEST ARGS...]: tcbon's test suite on the rig's Windows
# CPython VERSION, on a fresh copy of the project (tests write __pycache__
# and temporary files; the copy lives under the rig's state folder, never in
# the source tree). Exit code: pytest's.
#   .ci/windows/suite.sh 3.13                   # the whole suite
#   .ci/windows/suite.sh 3.8 -m "not slow" -x   # any pytest arguments
# A test that runs longer than RIG_HANG_AFTER seconds (default 120) gets
# every thread's stack written to stderr (rig_watchdog); the whole run is
# ended after RIG_SUITE_LIMIT seconds (default 2400).
set -uo pipefail
RIG=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$RIG/../.." && pwd)
STATE=${WINE_RIG_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tcbon-wine-rig}
v=${1:?usage: suite.sh VERSION [pytest args...]}
shift
export WINEPREFIX=${WINEPREFIX:-$STATE/prefix} WINEDEBUG=${WINEDEBUG:--all}
work=$STATE/work/cp${v/./}-$$
rm -rf "$work" && mkdir -p "$work"
# The pages too: tests read them (the version is said in one place only).
cp -r "$SRC/tcbon.py" "$SRC/test_tcbon.py" "$SRC/setup.cfg" "$SRC/pyproject.toml" "$SRC/tox.ini" \
    "$SRC/README.rst" "$SRC/CHANGES.rst" "$SRC/CONTRIBUTING.rst" "$SRC/docs" "$SRC/examples" \
    "$SRC/children" "$work/"
cp "$RIG/rig_watchdog.py" "$work/"
cd "$work" || exit 2
# Temporary files go to the copy too (Wine sets TEMP from its own registry).
mkdir -p tmp
export PYTHONDONTWRITEBYTECODE=1
timeout --kill-after=30 "${RIG_SUITE_LIMIT:-2400}" \
    "$RIG/run.sh" "$v" -m pytest -p rig_watchdog test_tcbon.py -p no:cacheprovider \
    --basetemp "$(winepath -w "$work/tmp" 2>/dev/null)" "$@" </dev/null 2>&1 | tee "$work.out"
status=${PIPESTATUS[0]}
# An interpreter that aborts under Wine (a Win32 call Wine lacks) can exit 0:
# without pytest's closing summary ("N passed ... in Ns"), the run failed.
if [ "$status" = 0 ] && ! grep -Eq ' in [0-9.]+s( \([0-9:]+\))?( =+)?[[:space:]]*$' "$work.out"; then
    echo "suite.sh: pytest printed no summary (its interpreter ended early): a failure"
    status=3
fi
cd / && rm -rf "$work" "$work.out"
exit $status
