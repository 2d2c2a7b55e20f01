#!/bin/sh
# The example worker of the "dummy-job" asset: reads its inputs, prints progress once a second, writes a result.
#
# POSIX sh (runs under busybox sh too). Environment contract, set by every workflow backend:
#   WML_INPUTS_DIR, WML_OUTPUTS_DIR   where inputs are staged and outputs are expected
#   WML_INPUT_<SLOT>                  absolute path of each staged input (slot upper-cased)
#   WML_OUTPUT_<NAME>                 absolute path where each output is expected
# Parameters: SLEEPTIME (seconds, default 2), FAIL (exit code at the end, default 0).
# Like the original middle-layer's example, SOURCE / DESTINATION may come from an env-file
# input: merged into the environment by the backend, or read here from WML_INPUT_CONFIG when it is not.
#
# The original's mode: when SOURCE or DESTINATION is an absolute path (the original's example env file:
# SOURCE="/etc/os-release", DESTINATION="/output/result", SLEEPTIME=10), both are required; the job sleeps
# SLEEPTIME seconds (default 10, as the original's) printing progress, then runs `mv -v SOURCE DESTINATION`
# (a SOURCE on the image's read-only root is copied instead, and said so). Otherwise SOURCE and DESTINATION
# are only listed in the result, as below.
set -u

sleep_pid=""
on_term() {
    [ -n "$sleep_pid" ] && kill "$sleep_pid" 2>/dev/null
    echo "terminated"
    exit 143
}
trap on_term TERM

# Reads KEY=VALUE lines of a dotenv file for the few keys this job knows, without executing it.
read_config() {
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line#export }
        case "$line" in
            SOURCE=* | DESTINATION=*) ;;  # the keys its config slot accepts; parameters never
            *) continue ;;
        esac
        key=${line%%=*}
        value=${line#*=}
        case "$value" in
            \"*\") value=${value#\"}; value=${value%\"} ;;
            \'*\') value=${value#\'}; value=${value%\'} ;;
        esac
        # The environment (set by the backend from the same file, or by the provider) wins.
        if eval "[ -z \"\${$key+set}\" ]"; then
            eval "$key=\$value"
        fi
    done <"$1"
}

# SLEEPTIME seconds, a progress line each.
sleep_with_progress() {
    i=1
    while [ "$i" -le "$SLEEPTIME" ]; do
        # Backgrounded so the TERM trap runs at once instead of after the sleep.
        sleep 1 &
        sleep_pid=$!
        wait "$sleep_pid"
        sleep_pid=""
        echo "progress $i/$SLEEPTIME"
        i=$((i + 1))
    done
}

require_integer() {
    case "$2" in
        '' | *[!0-9]*) echo "error: $1 must be a non-negative integer, got '$2'" >&2; exit 2 ;;
    esac
}

if [ -n "${WML_INPUT_CONFIG:-}" ] && [ -f "$WML_INPUT_CONFIG" ]; then
    read_config "$WML_INPUT_CONFIG"
fi

# The original middle-layer's example job: wait, then move SOURCE to DESTINATION.
move_like_the_original() {
    if [ -z "${SOURCE:-}" ] || [ -z "${DESTINATION:-}" ]; then
        echo "FAIL: SOURCE or DESTINATION unset" >&2
        exit 1
    fi
    if [ ! -f "$SOURCE" ]; then
        echo "FAIL: SOURCE $SOURCE does not exist" >&2
        exit 1
    fi
    echo "dummy-job: moving $SOURCE to $DESTINATION after $SLEEPTIME seconds"
    sleep_with_progress
    if ! mv -v "$SOURCE" "$DESTINATION"; then
        # A file of the image's read-only root can be copied but not removed.
        if [ -f "$SOURCE" ] && cp -v "$SOURCE" "$DESTINATION"; then
            echo "note: $SOURCE is read-only here: copied instead of moved"
        else
            echo "FAIL: cannot move $SOURCE to $DESTINATION" >&2
            exit 1
        fi
    fi
    exit 0
}

original=""
case "${SOURCE:-}" in /*) original=yes ;; esac
case "${DESTINATION:-}" in /*) original=yes ;; esac
if [ -n "$original" ]; then
    SLEEPTIME=${SLEEPTIME:-10}
    require_integer SLEEPTIME "$SLEEPTIME"
    move_like_the_original
fi

SLEEPTIME=${SLEEPTIME:-2}
FAIL=${FAIL:-0}
require_integer SLEEPTIME "$SLEEPTIME"
require_integer FAIL "$FAIL"

if [ -n "${WML_OUTPUT_RESULT:-}" ]; then
    result=$WML_OUTPUT_RESULT
elif [ -n "${WML_OUTPUTS_DIR:-}" ]; then
    result=$WML_OUTPUTS_DIR/result.txt
else
    result=/wml/outputs/result.txt
fi

summary=""
note() {
    echo "$1"
    summary="$summary$1
"
}

note "dummy-job: SLEEPTIME=$SLEEPTIME FAIL=$FAIL"
if [ -n "${WML_INPUT_DATA:-}" ] && [ -f "$WML_INPUT_DATA" ]; then
    size=$(wc -c <"$WML_INPUT_DATA" | tr -d ' ')
    first=$(head -n 1 "$WML_INPUT_DATA")
    note "data: $(basename "$WML_INPUT_DATA") ($size bytes)"
    note "data first line: $first"
fi
if [ -n "${WML_INPUT_BUNDLE:-}" ] && [ -d "$WML_INPUT_BUNDLE" ]; then
    note "bundle files:"
    listing=$(cd "$WML_INPUT_BUNDLE" && find . -type f | sort)
    # One name per line, whatever spaces or glob characters the names hold.
    set -f
    old_ifs=$IFS
    IFS='
'
    for f in $listing; do
        note "  ${f#./}"
    done
    IFS=$old_ifs
    set +f
fi
if [ -n "${SOURCE:-}" ]; then
    note "SOURCE=$SOURCE"
fi
if [ -n "${DESTINATION:-}" ]; then
    note "DESTINATION=$DESTINATION"
fi

sleep_with_progress

mkdir -p "$(dirname "$result")"
printf '%s' "$summary" >"$result"
echo "result written to $result"

if [ "$FAIL" -ne 0 ]; then
    echo "failing with exit code $FAIL as asked" >&2
    exit "$FAIL"
fi
echo "done"
