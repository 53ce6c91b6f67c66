# Shared by the CI scripts (source it).

# timed PART COMMAND...: run COMMAND, print how long it took ("ci: PART: N s"),
# return its exit status.  COMMAND runs where `set -e` does not apply (as in
# any `cmd || ...`), so a function passed here must chain its steps with &&.
timed() {
    local what=$1 t0=$SECONDS status=0
    shift
    "$@" || status=$?
    echo "ci: $what: $((SECONDS - t0)) s$([ "$status" = 0 ] || echo " (failed, exit $status)")"
    return "$status"
}
