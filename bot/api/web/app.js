// PEON's dashboard: the server list with live state from the event stream, start/stop/restart
// per the token's permission, and a server page (status, last log lines, backups).
//
// Rules this file keeps: every value from the API goes into the page through textContent or a
// property, never parsed as HTML, so a server name or log line is always text. The token lives in
// sessionStorage (this tab only) and travels in the Authorization header, never in a URL: the
// event stream is read with fetch() for that reason, since EventSource cannot send headers.

const TOKEN_KEY = "peon.token";
const LIFECYCLE = ["start", "stop", "restart"];
const LOG_LINES = 50;
const REFRESH_DELAY = 250; // ms: a burst of events for one server gives one refresh
const RETRY_FIRST = 1000;
const RETRY_MAX = 15000;

const $ = (id) => document.getElementById(id);

const state = {
  me: null, // GET /api/v1/token: {name, role, server, may}
  servers: new Map(), // name -> ServerOut or ServerDetail
  timers: new Map(), // name -> pending refresh
  lastEventId: null,
  stream: null, // AbortController of the open event stream
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);
const may = (action) => state.me !== null && state.me.may.includes(action);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.error?.message ?? `PEON answered ${response.status}.`;
    if (response.status === 401) signOut(message);
    throw new ApiError(response.status, message);
  }
  return data;
}

function notify(message, bad = false) {
  const box = $("notice");
  box.textContent = message;
  box.classList.toggle("bad", bad);
  box.hidden = !message;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// --- signing in and out -------------------------------------------------------------------

async function signIn(secret) {
  sessionStorage.setItem(TOKEN_KEY, secret);
  try {
    state.me = await api("GET", "/api/v1/token");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    notify(e.message, true);
    return false;
  }
  notify("");
  return true;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  state.servers.clear();
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.lastEventId = null;
  notify(message ?? "", Boolean(message));
  render();
}

// --- the event stream ---------------------------------------------------------------------

function setLive(on) {
  $("live").hidden = !on;
}

function parseBlock(block) {
  const message = {};
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const key = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    message[key] = key in message && key === "data" ? `${message[key]}\n${value}` : value;
  }
  return message;
}

async function follow(controller) {
  let delay = RETRY_FIRST;
  while (!controller.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" };
      // Resumed from the last event seen, so nothing is missed across a reconnect.
      if (state.lastEventId !== null) headers["Last-Event-ID"] = String(state.lastEventId);
      const response = await fetch("/api/v1/events/stream", {
        headers, signal: controller.signal, cache: "no-store",
      });
      if (response.status === 401) {
        signOut("The token was revoked or is no longer valid.");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
      setLive(true);
      delay = RETRY_FIRST;
      // Everything after this point comes on the stream: load the list once it is open.
      loadServers();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (message.data !== undefined) onEvent(message);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    setLive(false);
    await sleep(delay);
    delay = Math.min(delay * 2, RETRY_MAX);
  }
}

function onEvent(message) {
  if (message.id && /^\d+$/.test(message.id)) state.lastEventId = Number(message.id);
  let event;
  try {
    event = JSON.parse(message.data);
  } catch {
    return;
  }
  if (!event.server) return;
  if (!event.ok && LIFECYCLE.includes(event.kind)) {
    notify(`${event.kind} of ${event.server} failed${event.detail ? `: ${event.detail}` : "."}`, true);
  }
  refreshSoon(event.server);
}

function refreshSoon(name) {
  if (state.timers.has(name)) return;
  state.timers.set(name, setTimeout(() => {
    state.timers.delete(name);
    refreshServer(name);
  }, REFRESH_DELAY));
}

// --- servers ------------------------------------------------------------------------------

async function loadServers() {
  try {
    const { servers } = await api("GET", "/api/v1/servers");
    const names = new Set(servers.map((s) => s.name));
    for (const name of state.servers.keys()) if (!names.has(name)) state.servers.delete(name);
    for (const s of servers) {
      const known = state.servers.get(s.name);
      // Keep the players a detail fetch found until the next one (the list has none).
      state.servers.set(s.name, { ...s, players_online: known?.players_online ?? null });
      if (s.state === "running") refreshSoon(s.name);
    }
    renderList();
    const open = currentServer();
    if (open) refreshServer(open);
  } catch (e) {
    if (e.status !== 401) notify(e.message, true);
  }
}

async function refreshServer(name) {
  try {
    const detail = await api("GET", `/api/v1/servers/${encodeURIComponent(name)}`);
    state.servers.set(name, detail);
  } catch (e) {
    if (e.status === 404) state.servers.delete(name);
    else if (e.status !== 401) notify(e.message, true);
  }
  renderList();
  if (currentServer() === name) renderDetail(name, true);
}

async function act(name, action) {
  try {
    await api("POST", `/api/v1/servers/${encodeURIComponent(name)}/${action}`);
    const known = state.servers.get(name);
    if (known) state.servers.set(name, { ...known, operation: action });
    notify(`${action} of ${name} accepted; following it live.`);
  } catch (e) {
    notify(e.message, true);
  }
  renderList();
  if (currentServer() === name) renderDetail(name, false);
}

function stateText(s) {
  return s.operation ? `${s.operation}…` : s.state;
}

function stateClass(s) {
  if (s.operation) return "state busy";
  if (s.state === "running") return "state running";
  // Created (never started) and exited look alike to a player: not running, startable.
  return ["stopped", "created", "exited"].includes(s.state) ? "state stopped" : "state other";
}

function playersText(s) {
  if (s.state !== "running") return "";
  if (s.players_online === null || s.players_online === undefined) return "";
  return `${s.players_online} playing`;
}

function actionButtons(s) {
  const box = el("span", null, "actions");
  for (const action of LIFECYCLE) {
    if (!may(action)) continue;
    const button = el("button", action[0].toUpperCase() + action.slice(1), `act ${action}`);
    button.type = "button";
    button.dataset.action = action;
    const running = s.state === "running";
    button.disabled = Boolean(s.operation) || (action === "start" ? running : !running);
    button.addEventListener("click", () => {
      button.disabled = true;
      act(s.name, action);
    });
    box.append(button);
  }
  return box;
}

function renderList() {
  const list = $("servers");
  const rows = [];
  const names = [...state.servers.keys()].sort();
  for (const name of names) {
    const s = state.servers.get(name);
    const row = $("server-row").content.firstElementChild.cloneNode(true);
    row.dataset.server = name;
    const link = row.querySelector(".name");
    link.textContent = name;
    link.href = `#/servers/${encodeURIComponent(name)}`;
    const badge = row.querySelector(".state");
    badge.textContent = stateText(s);
    badge.className = stateClass(s);
    row.querySelector(".players").textContent = playersText(s);
    row.querySelector(".plan").textContent = s.warplan;
    row.querySelector(".actions").replaceWith(actionButtons(s));
    rows.push(row);
  }
  list.replaceChildren(...rows);
  $("list-empty").hidden = rows.length > 0;
}

// --- one server's page --------------------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function renderDetail(name, reload) {
  const s = state.servers.get(name);
  $("d-name").textContent = name;
  if (!s) {
    $("d-status").replaceChildren(el("dt", "State"), el("dd", "unknown (no such server?)"));
    $("d-actions").replaceChildren();
    return;
  }
  $("d-actions").replaceChildren(actionButtons(s));
  const rows = [
    ["State", stateText(s)],
    ["Players", s.state === "running" && s.players_online != null
      ? `${s.players_online}${s.players?.length ? ` (${s.players.join(", ")})` : ""}` : ""],
    ["Address", s.address ?? ""],
    ["War plan", s.warplan],
    ["Host", s.host],
    ["Health", s.health ?? ""],
    ["CPU", s.cpu_percent != null ? `${s.cpu_percent.toFixed(1)} %` : ""],
    ["Memory", s.memory_bytes != null
      ? `${bytes(s.memory_bytes)}${s.memory_limit ? ` of ${bytes(s.memory_limit)}` : ""}` : ""],
    ["Ports", (s.ports ?? []).map((p) => `${p.name} ${p.host}/${p.protocol}`).join(", ")],
    ["Created", `${when(s.created_at)} by ${s.created_by}`],
  ];
  const status = [];
  for (const [label, value] of rows) {
    if (value === "") continue;
    status.push(el("dt", label), el("dd", value, label === "State" ? stateClass(s) : ""));
  }
  $("d-status").replaceChildren(...status);
  if (reload) {
    loadLogs(name);
    loadBackups(name);
  }
}

async function loadLogs(name) {
  $("d-logs-box").hidden = !may("logs");
  if (!may("logs")) return;
  try {
    const { lines } = await api("GET",
      `/api/v1/servers/${encodeURIComponent(name)}/logs?tail=${LOG_LINES}`);
    if (currentServer() !== name) return;
    const pre = $("d-logs");
    pre.textContent = lines.length ? lines.join("\n") : "(no log lines)";
    pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    $("d-logs").textContent = e.message;
  }
}

async function loadBackups(name) {
  $("d-backups-box").hidden = false;
  try {
    const { backups } = await api("GET",
      `/api/v1/backups?server=${encodeURIComponent(name)}`);
    if (currentServer() !== name) return;
    const rows = backups.map((b) => {
      const tr = el("tr");
      tr.append(el("td", b.id), el("td", when(b.created_at)), el("td", bytes(b.size)),
        el("td", b.trigger), el("td", b.locked ? "locked" : ""));
      return tr;
    });
    $("d-backups").tBodies[0].replaceChildren(...rows);
    $("d-backups").hidden = rows.length === 0;
    $("d-backups-empty").hidden = rows.length > 0;
  } catch (e) {
    $("d-backups-empty").hidden = false;
    $("d-backups-empty").textContent = e.message;
  }
}

// --- views --------------------------------------------------------------------------------

function currentServer() {
  const match = /^#\/servers\/(.+)$/.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function render() {
  const signedIn = state.me !== null;
  $("login").hidden = signedIn;
  $("logout").hidden = !signedIn;
  $("who").textContent = signedIn
    ? `${state.me.name} (${state.me.role}${state.me.server ? ` of ${state.me.server}` : ""})`
    : "";
  const open = signedIn ? currentServer() : null;
  $("list").hidden = !signedIn || open !== null;
  $("detail").hidden = open === null;
  if (!signedIn) {
    setLive(false);
    $("token").focus();
    return;
  }
  if (open !== null) {
    renderDetail(open, true);
    if (!state.servers.has(open)) refreshServer(open);
  } else {
    renderList();
  }
}

function startStream() {
  if (state.stream) state.stream.abort();
  state.stream = new AbortController();
  follow(state.stream);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("token");
  const secret = input.value.trim();
  input.value = "";
  if (secret && (await signIn(secret))) {
    render();
    startStream();
  }
});
$("logout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);

(async () => {
  if (token() && (await signIn(token()))) {
    render();
    startStream();
  } else {
    render();
  }
})();
