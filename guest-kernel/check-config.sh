#!/usr/bin/env bash
# check-config.sh <config-file> [fragment.conf ...]
#
# Verifies that every option the fragments set survived into a final kernel
# .config (Kconfig silently drops an option whose dependencies are not met).
# Without fragment arguments, uses guest-kernel/fragments/*.conf.
#
#   CONFIG_X=y / =m / =<value>   the .config must have exactly that line
#   # CONFIG_X is not set        the .config must not set X (absent is fine)
#   CONFIG_X=n                   same as "is not set"
#
# Also fails when two fragments set the same option differently.
# Exit status: 0 all good; 1 options missing or conflicting (each one named
# on stderr); 2 usage error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $0 <config-file> [fragment.conf ...]" >&2
    exit 2
fi
config=$1
shift
if [[ ! -r $config ]]; then
    echo "check-config: cannot read $config" >&2
    exit 2
fi
if [[ $# -gt 0 ]]; then
    fragments=("$@")
else
    shopt -s nullglob
    export LC_ALL=C
    fragments=("$here"/fragments/*.conf)
    shopt -u nullglob
fi
if [[ ${#fragments[@]} -eq 0 ]]; then
    echo "check-config: no fragments" >&2
    exit 2
fi

# awk does the work: first the fragments (wanted values), then the .config.
awk '
    function wanted(name, value, where) {
        if (name in want && want[name] != value) {
            printf "conflict: CONFIG_%s is %s in %s but %s in %s\n", \
                name, show(value), where, show(want[name]), from[name] > "/dev/stderr"
            bad++
        }
        if (!(name in want)) order[++n] = name
        want[name] = value
        from[name] = where
    }
    function show(v) { return v == "n" ? "not set" : "=" v }
    FILENAME != config {
        where = FILENAME
        sub(/.*\//, "", where)
        if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) {
            name = substr($0, 8, RLENGTH - 8)
            value = substr($0, RLENGTH + 1)
            sub(/[ \t]+$/, "", value)
            wanted(name, value, where ":" FNR)
        } else if (match($0, /^# CONFIG_[A-Za-z0-9_]+ is not set/)) {
            name = $2
            sub(/^CONFIG_/, "", name)
            wanted(name, "n", where ":" FNR)
        }
        next
    }
    {
        if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) {
            name = substr($0, 8, RLENGTH - 8)
            have[name] = substr($0, RLENGTH + 1)
        }
    }
    END {
        for (i = 1; i <= n; i++) {
            name = order[i]
            w = want[name]
            h = (name in have) ? have[name] : "n"
            if (w != h) {
                printf "missing: CONFIG_%s wanted %s (%s), final config has %s\n", \
                    name, show(w), from[name], show(h) > "/dev/stderr"
                bad++
            }
        }
        if (bad) {
            printf "check-config: %d option(s) from the fragments did not survive into %s\n", \
                bad, config > "/dev/stderr"
            exit 1
        }
        printf "check-config: all %d options from %d fragment(s) present in %s\n", \
            n, nfrag, config > "/dev/stderr"
    }
' nfrag="${#fragments[@]}" config="$config" "${fragments[@]}" "$config"
