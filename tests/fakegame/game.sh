#!/bin/sh
# A fake game server for PEON's tests: logs a ready line, listens on a port, writes its world
# to the data volume, saves on SIGTERM/SIGINT and on the console commands "save" and "stop".
DATA=${DATA_DIR:-/data}
mkdir -p "$DATA"
echo "Fake game ${GAME_VERSION:-1} starting world=${WORLD_NAME:-world} max_players=${MAX_PLAYERS:-8}"
n=$(cat "$DATA/counter" 2>/dev/null || echo 0)
save() {
  n=$((n+1))
  echo "$n" > "$DATA/counter"
  echo "world=${WORLD_NAME:-world} version=${GAME_VERSION:-1} saves=$n" > "$DATA/world.sav"
  echo "World saved ($n)"
}
shutdown() { echo "Shutting down: $1"; save; kill "$NC" 2>/dev/null; exit 0; }
trap 'shutdown SIGTERM' TERM
trap 'shutdown SIGINT' INT
[ -n "$CRASH_ON_START" ] && { echo "fatal: $CRASH_ON_START"; exit 3; }
sleep "${READY_DELAY:-1}"
nc -ll -p "${GAME_PORT:-7777}" -e echo "hello from fakegame" &
NC=$!
# The console: stdin, or with RCON_PORT set a FIFO that the RCON daemon (rcond.c) writes each
# command to. Opened read-write so the FIFO never reads as closed between commands.
if [ -n "$RCON_PORT" ]; then
  mkdir -p /tmp && mkfifo /tmp/console
  /bin/rcond "$RCON_PORT" /tmp/console &
  exec 3<>/tmp/console
else
  exec 3<&0
fi
echo "Server ready for players on port ${GAME_PORT:-7777}"
while true; do
  if read -r line <&3; then
    case "$line" in
      save) save ;;
      stop) shutdown console ;;
      join\ *) echo "Player joined: ${line#join }" ;;
      leave\ *) echo "Player left: ${line#leave }" ;;
      say\ *) echo "Broadcast: ${line#say }" ;;
      crash) echo "crashing"; exit 3 ;;
      hang) echo "no longer answering"; kill "$NC" ;;
      *) echo "unknown command: $line" ;;
    esac
  else
    sleep 1 & wait $!
  fi
done
