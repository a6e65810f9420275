#!/bin/sh
# Start PEON as the unprivileged user "peon", with the group that owns the Docker socket, so
# the bot can reach the engine without running as root. Used for `run` and the healthcheck.
set -eu
SOCKET="${DOCKER_SOCKET:-/var/run/docker.sock}"
DATA="${PEON_DATA_DIR:-/data}"

if [ "$(id -u)" != "0" ]; then
  # Started with --user: the operator chose the user (and its groups) already.
  exec peon "$@"
fi

if [ -S "$SOCKET" ]; then
  gid="$(stat -c %g "$SOCKET")"
  if [ "$gid" = "0" ]; then
    # A socket owned by root's group (Docker Desktop, some distributions): membership of
    # group 0 is what reaching it takes; the user id stays unprivileged.
    group=root
  else
    group="$(getent group "$gid" | cut -d: -f1 || true)"
    if [ -z "$group" ]; then
      group=docker-host
      groupadd --gid "$gid" "$group"
    fi
  fi
  id -nG peon | tr ' ' '\n' | grep -qx "$group" || usermod -aG "$group" peon
fi

mkdir -p "$DATA"
# Walked once (the first start, or data written by an earlier root-run PEON), not at every
# start or healthcheck: a large backup tree takes a while.
[ "$(stat -c %U "$DATA")" = "peon" ] || chown -R peon:peon "$DATA"

exec setpriv --reuid=peon --regid=peon --init-groups -- peon "$@"
