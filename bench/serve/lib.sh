# Shared by the serve benchmarks (sourced): the chatglm binary and starting a server.

# Sets CHATGLM_BIN (builds the release binary unless it is given).
find_chatglm() {
    if [[ -z "${CHATGLM_BIN:-}" ]]; then
        (cd "$root" && cargo build --release -p chatglm-cli)
        CHATGLM_BIN=$root/target/release/chatglm
    fi
}

# start_server ARGS...: `chatglm serve ARGS` on a free loopback port, waiting until /health answers
# (loading and quantizing a 6B checkpoint takes a while). Sets port, server (pid) and log.
start_server() {
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$(mktemp /tmp/chatglm-serve-XXXX.log)
    "$CHATGLM_BIN" serve --host 127.0.0.1 --port "$port" "$@" 2>"$log" &
    server=$!
    for _ in $(seq 1 1200); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
            >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$server" 2>/dev/null; then cat "$log"; return 1; fi
        sleep 0.5
    done
    echo "the server did not come up in 10 minutes" >&2
    return 1
}
