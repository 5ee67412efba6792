#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: `start DIR` runs initdb in DIR (as the `postgres`
# user when run as root), starts the server on a free loopback port with its socket in DIR,
# creates the database `herald` and prints its URL; `restart DIR` restarts it (the tests of a
# cluster through a database restart); `down DIR` and `up DIR` stop and start it again on its
# data; `stop DIR` stops the server and removes DIR. The tests run
# it with fsync off (nothing they check survives a power loss); PG_FSYNC=on for the benchmarks.
# Needs Debian's postgresql package (apt-get install -y postgresql).
set -euo pipefail

bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# How the server runs: on DIR's port (written at start), its socket in DIR.
options() {
  echo "-c listen_addresses=127.0.0.1 -c port=$(cat "$1/port") -c unix_socket_directories=$1 -c max_connections=400 -c fsync=${PG_FSYNC:-off}"
}

case "${1:-}" in
start)
  dir="$2"
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  as_owner "$bindir/initdb" -D "$dir/data" -U herald --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  echo "$port" >"$dir/port"
  # max_connections: each node's pool and its notification connection, for every test's nodes.
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(options "$dir")" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U herald herald
  echo "postgres://herald@127.0.0.1:$port/herald?sslmode=disable"
  ;;
restart)
  dir="$2"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -m fast restart >/dev/null
  ;;
down)
  dir="$2"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >/dev/null
  ;;
up)
  dir="$2"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(options "$dir")" start >/dev/null
  ;;
stop)
  dir="$2"
  if [ -d "$dir/data" ]; then as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start DIR | restart DIR | down DIR | up DIR | stop DIR" >&2
  exit 2
  ;;
esac
