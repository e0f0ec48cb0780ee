# shellcheck shell=bash
# Shared by deploy/local/up, down and status; sourced, never run.
#
# The state directory (deploy/local/run/ unless PACE_LOCAL_RUN_DIR is set)
# holds:
#   pids         one line per process `up` started: KIND PID STARTTIME ADDR
#                (KIND is redis, node or haproxy; STARTTIME is field 22 of
#                /proc/PID/stat, so a PID the kernel has reused for some
#                other process is never mistaken for ours)
#   cluster.env  the settings `up` used, for status and down, and each
#                node's command line (NODE_CMD_<port>), for
#                pm2-equivalent-systemd/rolling-restart --local
#   haproxy.cfg  the generated gateway config
#   *.log        each process's stdout and stderr
#   .lock        flock(1) lock so that up and down never run at once

# shellcheck disable=SC2034 # used by the scripts that source this file
LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LOCAL_DIR/../.." && pwd)
RUN_DIR=${PACE_LOCAL_RUN_DIR:-$LOCAL_DIR/run}
PIDS_FILE=$RUN_DIR/pids
ENV_FILE=$RUN_DIR/cluster.env
LOCK_FILE=$RUN_DIR/.lock

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# Takes the state directory's lock on fd 9, or fails at once. Close fd 9 in
# every long-running child (`9>&-`) or the child would hold the lock.
take_lock() {
  mkdir -p "$RUN_DIR"
  exec 9>"$LOCK_FILE"
  if ! flock -n 9; then
    die "another deploy/local/up or down is running on $RUN_DIR; wait for it"
  fi
}

# Field 22 of /proc/PID/stat (start time in clock ticks since boot), or
# nothing when the process does not exist.
proc_starttime() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # The command name (field 2) may hold spaces and parentheses: split after
  # the last ')'. rest[0] is then field 3 (state), rest[19] field 22.
  rest=${stat##*) }
  local -a f
  read -r -a f <<<"$rest"
  printf '%s\n' "${f[19]:-}"
}

proc_state() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  rest=${stat##*) }
  printf '%s\n' "${rest%% *}"
}

# True while PID is the very process recorded with STARTTIME and has not
# exited (a zombie waiting to be reaped counts as gone).
is_ours_and_alive() {
  local pid=$1 start=$2 now state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  now=$(proc_starttime "$pid")
  [ -n "$now" ] && [ "$now" = "$start" ] || return 1
  state=$(proc_state "$pid")
  [ "$state" != Z ] && [ "$state" != X ]
}

# Appends one started process to the pids file.
record_pid() {
  local kind=$1 pid=$2 addr=$3 start
  start=$(proc_starttime "$pid")
  [ -n "$start" ] || start=unknown
  printf '%s %s %s %s\n' "$kind" "$pid" "$start" "$addr" >>"$PIDS_FILE"
}

# Prints the recorded lines of one kind (all kinds without an argument).
recorded() {
  [ -f "$PIDS_FILE" ] || return 0
  if [ $# -eq 0 ]; then
    cat "$PIDS_FILE"
  else
    awk -v k="$1" '$1 == k' "$PIDS_FILE"
  fi
}

# True when at least one recorded process is still alive.
any_recorded_alive() {
  local kind pid start addr
  while read -r kind pid start addr; do
    [ -n "$kind" ] || continue
    if is_ours_and_alive "$pid" "$start"; then
      return 0
    fi
  done < <(recorded)
  return 1
}

# stop_kind KIND SIGNAL WAIT_SECONDS: sends SIGNAL to every live recorded
# process of KIND, waits up to WAIT_SECONDS for them to exit, then SIGKILLs
# whatever is left. Only PIDs from the pids file whose start time still
# matches are ever signalled.
stop_kind() {
  local kind=$1 sig=$2 wait_s=$3 k pid start addr entry
  local -a live=() left=()
  while read -r k pid start addr; do
    [ -n "$k" ] || continue
    if is_ours_and_alive "$pid" "$start"; then
      log "stopping $kind $addr (pid $pid, SIG$sig)"
      kill -s "$sig" "$pid" 2>/dev/null || true
      live+=("$pid $start $addr")
    fi
  done < <(recorded "$kind")
  [ ${#live[@]} -gt 0 ] || return 0

  local deadline=$((SECONDS + wait_s))
  while :; do
    left=()
    for entry in "${live[@]}"; do
      read -r pid start addr <<<"$entry"
      if is_ours_and_alive "$pid" "$start"; then
        left+=("$entry")
      fi
    done
    [ ${#left[@]} -gt 0 ] || return 0
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  for entry in "${left[@]}"; do
    read -r pid start addr <<<"$entry"
    log "$kind $addr (pid $pid) still running after ${wait_s}s: SIGKILL"
    kill -s KILL "$pid" 2>/dev/null || true
  done
  # SIGKILL cannot be caught, but the kernel takes a moment to tear the
  # process down: wait (bounded) so the ports are free when we return.
  local tries=0 still
  while [ "$tries" -lt 25 ]; do
    still=0
    for entry in "${left[@]}"; do
      read -r pid start addr <<<"$entry"
      if is_ours_and_alive "$pid" "$start"; then still=1; fi
    done
    [ "$still" = 1 ] || return 0
    tries=$((tries + 1))
    sleep 0.2
  done
  log "warning: some $kind processes survived SIGKILL (see ps)"
}

# Stops everything recorded, in dependency order: nodes first (SIGTERM makes
# them drain: devices are told to reconnect with close code 1012, and the
# node deregisters from Redis), then the gateway, then Redis.
# Usage: stop_all NODE_WAIT_SECONDS
stop_all() {
  local node_wait=$1
  stop_kind node TERM "$node_wait"
  stop_kind haproxy TERM 5
  stop_kind redis TERM 10
}

# True when something listens on 127.0.0.1:PORT.
port_in_use() {
  # shellcheck disable=SC2016 # $1 is the inner shell's
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Path of a Debian binary, also when /usr/sbin is not on PATH.
find_bin() {
  local name=$1 p
  if p=$(command -v "$name" 2>/dev/null); then
    printf '%s\n' "$p"
    return 0
  fi
  for p in "/usr/sbin/$name" "/usr/bin/$name" "/usr/local/sbin/$name" "/usr/local/bin/$name"; do
    if [ -x "$p" ]; then
      printf '%s\n' "$p"
      return 0
    fi
  done
  return 1
}

# HTTP status code of a GET (000 when nothing answers). Extra curl
# arguments may follow the URL.
http_code() {
  local url=$1
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true
}
