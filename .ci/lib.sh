# Shared by the CI scripts (source it).

# timed PART COMMAND...: run COMMAND, then print how long it took ("ci: PART: N s").
timed() {
    local what=$1 t0=$SECONDS
    shift
    "$@"
    echo "ci: $what: $((SECONDS - t0)) s"
}
