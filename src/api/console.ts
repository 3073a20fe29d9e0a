// The web console, GET / on every node's control API: one static page (HTML,
// CSS and JavaScript inline, no framework, nothing fetched from elsewhere)
// that polls the node's read-only JSON endpoints (/v1/status, /v1/nodes,
// /v1/volumes, /v1/volumes/NAME, /v1/volumes/NAME/stats, /v1/events) and
// draws the cluster map, the volumes table, a volume's live graphs on canvas
// and the recent events. It changes nothing. Kept as a string in a module so
// the build copies nothing and a daemon serves it from its own files.
// test/e2e/console.test.ts drives it in headless Chromium.
//
// The script is in a template literal: it uses no backquotes and no "${".

const css = String.raw`
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: var(--fg); background: #fff; }
header { display: flex; gap: 1.5em; align-items: baseline; padding: .8em 1.2em; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { font-size: 18px; margin: 0; }
header a { color: inherit; }
main { padding: 1em 1.2em; }
h2 { font-size: 15px; margin: 1.2em 0 .5em; }
.muted { color: var(--muted); }
.nodes { display: flex; flex-wrap: wrap; gap: .8em; }
.node { border: 1px solid var(--line); border-left: 6px solid var(--ok); border-radius: 6px; padding: .6em .8em; min-width: 15em; }
.node[data-health="down"] { border-left-color: var(--bad); background: #ffebe9; }
.node .name { font-weight: 600; }
.badge { display: inline-block; padding: 0 .45em; border-radius: 1em; font-size: 12px; border: 1px solid var(--line); margin-right: .3em; }
.up, .in-sync { color: var(--ok); } .down { color: var(--bad); } .catching-up, .unknown { color: var(--warn); }
.bar { height: 6px; background: var(--bg); border: 1px solid var(--line); border-radius: 3px; margin-top: .4em; }
.bar > div { height: 100%; background: #54aeff; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-weight: 600; background: var(--bg); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.graphs { display: flex; flex-wrap: wrap; gap: 1em; }
.graph { border: 1px solid var(--line); border-radius: 6px; padding: .5em; }
.graph h3 { font-size: 13px; margin: 0 0 .3em; }
canvas { display: block; }
.events li { margin: .15em 0; }
#error { color: var(--bad); }
`;

const script = String.raw`
"use strict";
var pollMs = 1000;
/** The volumes table asks for the IOPS and throughput of at most this many volumes a poll. */
var statsVolumesMax = 50;
/** Events the page keeps. */
var eventsKeptMax = 200;
var state = { status: null, nodes: [], volumes: [], events: [], eventSeq: 0, stats: {}, volume: null, error: "", needToken: false };

function el(tag, attrs, children) {
  var e = document.createElement(tag);
  for (var k in attrs || {}) {
    if (k === "text") e.textContent = attrs[k];
    else e.setAttribute(k, attrs[k]);
  }
  (children || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
  return e;
}

function size(n) {
  var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(n >= 100 ? 0 : 1)) + " " + u[i];
}

function num(n, digits) { return n === undefined || n === null ? "-" : Number(n).toFixed(digits || 0); }

// The API wants a token (docs/security.md): the page takes one from its
// address once (NODE:9001/#token=TOKEN, then drops it from the
// address) or from the form it shows after a 401 or 403, keeps it for this
// browser tab only (sessionStorage), and sends it as a bearer token.
var tokenKey = "pxd-token";
(function () {
  var m = /^#token=(.+)$/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(tokenKey, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + "#/");
})();

function getJson(path) {
  var token = sessionStorage.getItem(tokenKey);
  var headers = token ? { Authorization: "Bearer " + token } : {};
  return fetch(path, { cache: "no-store", headers: headers }).then(function (r) {
    return r.json().then(function (body) {
      if (r.status === 401 || r.status === 403) state.needToken = true;
      if (!r.ok) throw new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
      return body;
    });
  });
}

function tokenForm() {
  var input = el("input", { type: "password", id: "token", size: "60", placeholder: "pxd1.…" });
  var form = el("form", { id: "token-form" }, [
    el("span", { text: "This console reads the API with a token: make one with \"pxd auth token create --role read-only\" and paste it here. " }),
    input,
    el("button", { type: "submit", text: "use it" }),
  ]);
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    sessionStorage.setItem(tokenKey, input.value.trim());
    state.needToken = false;
  });
  return form;
}

function selected() {
  var m = /^#\/volume\/(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function last(samples) { return samples && samples.length ? samples[samples.length - 1] : null; }

function poll() {
  var name = selected();
  var wanted = [getJson("/v1/status"), getJson("/v1/nodes"), getJson("/v1/volumes"), getJson("/v1/events?since=" + state.eventSeq)];
  Promise.all(wanted).then(function (r) {
    state.status = r[0]; state.volumes = r[2].volumes;
    state.nodes = r[1].nodes.sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });
    r[3].events.forEach(function (e) { state.events.push(e); state.eventSeq = e.seq; });
    state.events = state.events.slice(-eventsKeptMax);
    var names = state.volumes.slice(0, statsVolumesMax).map(function (v) { return v.name; });
    var stats = names.map(function (n) { return getJson("/v1/volumes/" + encodeURIComponent(n) + "/stats").catch(function () { return null; }); });
    var detail = name ? getJson("/v1/volumes/" + encodeURIComponent(name)).catch(function () { return null; }) : Promise.resolve(null);
    return Promise.all([Promise.all(stats), detail]).then(function (x) {
      state.stats = {};
      x[0].forEach(function (s, i) { if (s) state.stats[names[i]] = s; });
      state.volume = x[1];
      state.error = "";
      state.needToken = false;
    });
  }).catch(function (e) {
    state.error = "this node's API did not answer (" + e.message + "); showing what it said last";
  }).then(render, render).then(function () { setTimeout(poll, pollMs); });
}

function nodeCard(n) {
  var used = n.capacityBytes > 0 ? Math.min(100, 100 * n.usedBytes / n.capacityBytes) : 0;
  var role = n.metaLeader ? "catalog leader" : n.metaVoter ? "catalog voter" : "catalog learner";
  return el("div", { class: "node", "data-node": n.name, "data-health": n.health }, [
    el("div", {}, [el("span", { class: "name", text: n.name }), " ", el("span", { class: "badge " + n.health, "data-role": "health", text: n.health })]),
    el("div", { class: "muted", text: n.address + "  API " + n.apiPort + "  NBD " + n.nbdPort }),
    el("div", { text: role + (n.labels && n.labels.zone ? ", zone " + n.labels.zone : "") + (n.draining ? ", draining" : "") }),
    el("div", { class: "muted", text: size(n.usedBytes) + " used of " + size(n.capacityBytes) + ", " + size(n.freeBytes) + " free" }),
    el("div", { class: "bar" }, [el("div", { style: "width:" + used.toFixed(1) + "%" })]),
  ]);
}

function replicaChips(v) {
  return el("span", {}, v.replicas.map(function (r) {
    return el("span", { class: "badge " + r.state, title: r.state + (r.progress ? " " + r.progress : ""), text: r.node + (r.leader ? " *" : "") });
  }));
}

function volumeRow(v) {
  var s = last(state.stats[v.name] && state.stats[v.name].samples);
  var leader = v.replicas.filter(function (r) { return r.leader; })[0];
  var link = el("a", { href: "#/volume/" + encodeURIComponent(v.name), text: v.name });
  return el("tr", { "data-volume": v.name }, [
    el("td", {}, [link]),
    el("td", { class: "num", text: size(v.sizeBytes) }),
    el("td", { class: "num", text: String(v.repl) }),
    el("td", {}, [replicaChips(v)]),
    el("td", { text: leader ? leader.node : "-" }),
    el("td", { text: v.attachments.map(function (a) { return a.host + (a.device ? ":" + a.device : ""); }).join(", ") || "-" }),
    el("td", { class: "num", "data-col": "iops", text: s ? num(s.readIops + s.writeIops) : "-" }),
    el("td", { class: "num", text: s ? size(s.readBytesPerSec + s.writeBytesPerSec) + "/s" : "-" }),
  ]);
}

function volumesTable() {
  var head = ["volume", "size", "repl", "replicas (* leader)", "leader", "attached", "IOPS", "throughput"];
  return el("table", { id: "volumes" }, [
    el("tr", {}, head.map(function (h, i) { return el("th", { class: i === 1 || i === 2 || i >= 6 ? "num" : "", text: h }); })),
  ].concat(state.volumes.map(volumeRow)));
}

/** A line graph of up to two series on a canvas; data-max and data-points say what it drew. */
function graph(id, title, samples, series, unit) {
  var w = 460, h = 150, pad = 34;
  var c = el("canvas", { id: id, width: String(w), height: String(h) });
  var max = 0;
  samples.forEach(function (s) { series.forEach(function (k) { max = Math.max(max, s[k.key]); }); });
  c.setAttribute("data-max", String(max));
  c.setAttribute("data-points", String(samples.length));
  var g = c.getContext("2d");
  g.font = "11px system-ui";
  g.strokeStyle = "#d0d7de"; g.fillStyle = "#656d76";
  var top = max > 0 ? max * 1.1 : 1;
  for (var i = 0; i <= 2; i++) {
    var y = h - pad / 2 - (h - pad) * i / 2;
    g.beginPath(); g.moveTo(pad, y); g.lineTo(w, y); g.stroke();
    g.fillText(unit(top * i / 2), 0, y + 3);
  }
  series.forEach(function (k) {
    g.strokeStyle = k.color; g.lineWidth = 1.5; g.beginPath();
    samples.forEach(function (s, i) {
      var x = pad + (w - pad) * (samples.length > 1 ? i / (samples.length - 1) : 1);
      var y = h - pad / 2 - (h - pad) * s[k.key] / top;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  });
  var legend = el("div", { class: "muted" }, series.map(function (k) {
    var now = last(samples);
    return el("span", { style: "color:" + k.color + ";margin-right:1em", text: k.label + " " + (now ? unit(now[k.key]) : "-") });
  }));
  return el("div", { class: "graph" }, [el("h3", { text: title }), c, legend]);
}

function volumePage(name) {
  var v = state.volume;
  var samples = (state.stats[name] && state.stats[name].samples) || [];
  var out = el("section", { id: "volume-page", "data-volume": name }, [el("h2", { text: "volume " + name })]);
  if (v === undefined) { out.appendChild(el("p", { class: "muted", text: "loading…" })); return out; }
  if (!v) { out.appendChild(el("p", { text: "no volume named " + name + " on this cluster (it may have been deleted); back to the list" })); return out; }
  out.appendChild(el("p", {}, [
    size(v.sizeBytes) + ", " + v.repl + " replica(s), " + size(v.allocatedBytes) + " allocated, " + v.connections + " NBD connection(s) here, " + v.state + "  ",
    replicaChips(v),
  ]));
  var limits = v.qos && (v.qos.maxIops || v.qos.maxBandwidthBytesPerSec) ? "QoS: " + (v.qos.maxIops ? v.qos.maxIops + " IOPS " : "") + (v.qos.maxBandwidthBytesPerSec ? size(v.qos.maxBandwidthBytesPerSec) + "/s " : "") + "on each node" : "no QoS limits";
  var every = v.snapshotSchedule ? ", one every " + Math.round(v.snapshotSchedule.everySec / 60) + " min, the newest " + v.snapshotSchedule.keep + " kept" : "";
  out.appendChild(el("p", { id: "volume-settings", class: "muted", text: (v.snapshots || 0) + " snapshot(s)" + every + "; " + limits + (v.encrypted ? "; encrypted at rest (AES-256-XTS)" : "") }));
  var behind = v.replicas.filter(function (r) { return r.state === "catching-up"; });
  if (behind.length) {
    out.appendChild(el("ul", { id: "progress" }, behind.map(function (r) {
      return el("li", { text: r.node + ": catching up" + (r.progress ? ", at " + r.progress : "") + (r.copy ? ", copy " + size(r.copy.bytesDone) + " of " + size(r.copy.bytesTotal) + (r.copy.etaSec !== undefined ? ", about " + Math.ceil(r.copy.etaSec) + " s left" : "") : "") });
    })));
  }
  var iops = function (n) { return n >= 1000 ? (n / 1000).toFixed(1) + "k" : n.toFixed(0); };
  var rate = function (n) { return size(n) + "/s"; };
  var ms = function (n) { return n.toFixed(2) + " ms"; };
  out.appendChild(el("div", { class: "graphs" }, [
    graph("graph-iops", "IOPS", samples, [{ key: "writeIops", label: "write", color: "#cf222e" }, { key: "readIops", label: "read", color: "#0969da" }], iops),
    graph("graph-throughput", "throughput", samples, [{ key: "writeBytesPerSec", label: "write", color: "#cf222e" }, { key: "readBytesPerSec", label: "read", color: "#0969da" }], rate),
    graph("graph-latency", "mean latency", samples, [{ key: "writeLatencyMs", label: "write", color: "#cf222e" }, { key: "readLatencyMs", label: "read", color: "#0969da" }], ms),
  ]));
  out.appendChild(el("h2", { text: "events of " + name }));
  out.appendChild(eventList(state.events.filter(function (e) { return e.volume === name; })));
  return out;
}

function eventList(events) {
  if (!events.length) return el("p", { class: "muted", text: "nothing yet" });
  return el("ul", { class: "events" }, events.slice(-30).reverse().map(function (e) {
    return el("li", { "data-kind": e.kind }, [el("span", { class: "muted", text: e.at.replace("T", " ").slice(0, 19) + "  " }), e.message]);
  }));
}

function render() {
  var s = state.status;
  var head = document.getElementById("summary");
  head.textContent = s ? ("node " + s.nodeId + " at " + s.listen + ", " + s.health + (s.reasons.length ? ": " + s.reasons.join("; ") : "") + ", pxd " + s.version) : "";
  document.getElementById("error").textContent = state.error;
  // The token form stays put between polls (a render replaces only <main>), so typing is not lost.
  var form = document.getElementById("token-form");
  if (state.needToken && !form) document.querySelector("header").appendChild(tokenForm());
  if (!state.needToken && form) form.remove();
  var main = document.getElementById("main");
  main.replaceChildren();
  var name = selected();
  if (name) {
    main.appendChild(el("p", {}, [el("a", { href: "#/", text: "all volumes" })]));
    main.appendChild(volumePage(name));
    return;
  }
  main.appendChild(el("h2", { text: "nodes" }));
  main.appendChild(el("div", { class: "nodes", id: "nodes" }, state.nodes.map(nodeCard)));
  main.appendChild(el("h2", { text: "volumes" }));
  main.appendChild(volumesTable());
  main.appendChild(el("h2", { text: "recent events (as this node saw them)" }));
  main.appendChild(eventList(state.events));
}

window.addEventListener("hashchange", function () { state.volume = undefined; render(); });
poll();
`;

/** The whole page. */
export const consolePage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pxd console</title>
<style>${css}</style>
</head>
<body>
<header><h1><a href="#/">pxd</a></h1><span id="summary" class="muted"></span><span id="error"></span></header>
<main id="main"><p class="muted">loading…</p></main>
<script>${script}</script>
</body>
</html>
`;
