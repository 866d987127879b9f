#!/usr/bin/env bash
# A Docker engine for v2v's containers on Debian 12, with no container registry (run as root):
#
#   deploy/docker-engine.sh setup        docker.io + mmdebstrap (Debian), compose v2 (install-compose.sh)
#   deploy/docker-engine.sh start        dockerd without bridge or iptables, unless one answers already
#   deploy/docker-engine.sh base-image   debian:bookworm-slim made locally (mmdebstrap | docker import)
#   deploy/docker-engine.sh stop         stops the dockerd that `start` started (and nothing else)
#
# dockerd runs with --bridge=none --iptables=false --ip-forward=false: the host's network stays as it
# was; v2v's containers use no network (Unix sockets on volumes) or the host's (the coordinator).
# Nothing is pulled: the base image is built from the host's own apt sources.
set -euo pipefail

STATE=${V2V_DOCKERD_STATE:-/run/v2v-dockerd}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
HERE=$(cd "$(dirname "$0")" && pwd)

engine_answers() { docker info >/dev/null 2>&1; }

setup() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if ((${#missing[@]})); then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    "$HERE/install-compose.sh"
}

start() {
    if engine_answers; then
        return 0
    fi
    mkdir -p "$STATE"
    # setsid: dockerd outlives this script, in its own session (stop kills it by its pid).
    setsid dockerd --bridge=none --iptables=false --ip-forward=false >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        engine_answers && return 0
        sleep 0.5
    done
    echo "docker-engine: dockerd did not answer within 60 s; its log:" >&2
    tail -30 "$LOG" >&2
    stop
    return 1
}

stop() {
    [[ -f $PIDFILE ]] || return 0
    local pid
    pid=$(cat "$PIDFILE")
    if kill "$pid" 2>/dev/null; then
        # dockerd stops its containerd and containers itself; give it the time to.
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
    fi
    rm -f "$PIDFILE"
}

base_image() {
    docker image inspect debian:bookworm-slim >/dev/null 2>&1 && return 0
    # The host's deb822 sources when it has them (same mirror, same snapshot); else mmdebstrap's default.
    local sources=()
    [[ -f /etc/apt/sources.list.d/debian.sources ]] && sources=(/etc/apt/sources.list.d/debian.sources)
    mmdebstrap --quiet --variant=minbase bookworm - "${sources[@]}" | docker import - debian:bookworm-slim >/dev/null
}

case ${1:-} in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    base-image) base_image ;;
    *) echo "usage: $0 setup|start|base-image|stop" >&2; exit 2 ;;
esac
