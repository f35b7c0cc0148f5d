// The live dashboard: polls the JSON API, keeps per-partition series client-side, draws SVG.
//
// Everything from the API is put on the page as text (textContent, attribute values,
// validated hrefs), never parsed as HTML: anomalies carry attacker-controlled strings.
"use strict";

(() => {
  const POLL_MS = 3000;
  const KEEP = 120; // samples per partition: 6 minutes at one poll every 3 s
  const RATE_WINDOW = 3; // samples the throughput is measured over (9 s): a poll sees whole batches
  const FLAG_WINDOW = 10; // samples the flag rate is measured over (30 s)
  const LIMIT = 500; // the API's page size ceiling
  const HASH_RE = /^0x[0-9a-f]{64}$/;
  const ADDRESS_RE = /^0x[0-9a-f]{40}$/;
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const NS = "http://www.w3.org/2000/svg";

  const state = {
    samples: new Map(), // partition -> [{t, seen, flagged, lag}], oldest first
    stats: null,
    anomalies: [], // the last listing, newest first
    shownKey: null, // identity of the rows on screen, so an unchanged poll keeps them
    selected: null, // keyOf the anomaly shown in detail
    listingSeq: 0,
  };

  const $ = (id) => document.getElementById(id);
  const color = (partition) => COLORS[partition % COLORS.length];

  // -- DOM helpers: text only --

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  function etherscan(kind, value) {
    // Only a well-formed hash or address becomes a link; anything else stays text.
    const v = typeof value === "string" ? value.toLowerCase() : "";
    const ok = kind === "tx" ? HASH_RE.test(v) : ADDRESS_RE.test(v);
    if (!ok) return document.createTextNode(value === null || value === undefined ? "–" : String(value));
    return el("a", {href: `https://etherscan.io/${kind}/${v}`, target: "_blank", rel: "noopener noreferrer",
      class: "mono"}, v);
  }

  // -- formatting --

  const intFmt = new Intl.NumberFormat("en-US", {maximumFractionDigits: 0});
  function num(value, digits = 3) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value) && Math.abs(value) >= 1000) return intFmt.format(value);
    if (digits > 0 && value !== 0 && Math.abs(value) < 10 ** -digits) return value.toExponential(1);
    return String(Number(value.toFixed(digits)));
  }
  function tick(value) { // an axis label: as few digits as the scale needs
    if (value === 0) return "0";
    if (Math.abs(value) >= 100) return intFmt.format(value);
    return String(Number(value.toPrecision(2)));
  }
  const pct = (value) => (value === null || value === undefined ? "–" : `${num(100 * value, 2)}%`);
  const short = (s) => (typeof s === "string" && s.length > 14 ? `${s.slice(0, 8)}…${s.slice(-4)}` : String(s));
  function clock(seconds) {
    return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleTimeString("en-GB") : "–";
  }
  function isoTime(seconds) {
    if (typeof seconds !== "number") return "–";
    const d = new Date(seconds * 1000);
    return Number.isNaN(d.getTime()) ? String(seconds) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // -- the API --

  // With API_READ_KEY set the API answers 401 until the key is given: the page asks for it
  // once and keeps it for this tab only (sessionStorage), never in a URL.
  const KEY_STORE = "anomaly-stream-api-key";

  function headers() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? {Accept: "application/json", Authorization: `Bearer ${key}`} : {Accept: "application/json"};
  }

  async function getJSON(path) {
    const response = await fetch(path, {headers: headers(), cache: "no-store"});
    if (response.status === 401) $("auth").hidden = false;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const why = body && typeof body.error === "string" ? body.error : response.statusText;
      const error = new Error(`${path.split("?")[0]}: ${response.status} ${why}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // -- filters --

  function filters() {
    const address = $("f-address").value.trim().toLowerCase();
    const minRaw = $("f-min-score").value.trim();
    const min = minRaw === "" ? null : Number(minRaw);
    const minOk = min === null || (Number.isFinite(min) && min >= 0 && min <= 1);
    $("f-min-score").classList.toggle("invalid", !minOk);
    const range = Number($("f-range").value) || null;
    return {
      address, // a whole address goes to the API, a part is matched here
      fullAddress: ADDRESS_RE.test(address),
      minScore: minOk ? min : null,
      since: range ? Date.now() / 1000 - range : null,
      reason: $("f-reason").value,
      severity: $("f-severity").value,
    };
  }

  function listingPath(f) {
    const params = new URLSearchParams({limit: String(LIMIT)});
    if (f.fullAddress) params.set("address", f.address);
    if (f.minScore !== null) params.set("min_score", String(f.minScore));
    if (f.since !== null) params.set("since", f.since.toFixed(3));
    return `/api/v1/anomalies?${params}`;
  }

  function matches(d, f) {
    if (f.address && !f.fullAddress && !String(d.address).includes(f.address)) return false;
    if (f.severity && d.severity !== f.severity) return false;
    if (f.reason && !(Array.isArray(d.reasons) && d.reasons.some((r) => r && r.rule === f.reason))) return false;
    return true;
  }

  // A transaction's receiving sides (a transferFrom's recipient and owner) may each raise it.
  const keyOf = (d) => d.perspective === "sender" ? `${d.tx_hash}:sender` : `${d.tx_hash}:${d.perspective}:${d.address}`;

  // -- series --

  function record(stats, t) {
    const now = new Map(); // partition -> {seen, flagged, lag}
    for (const replica of stats.replicas || []) {
      for (const m of replica.models || []) {
        const entry = now.get(m.partition) || {seen: 0, flagged: 0, lag: null};
        if (m.perspective === "sender") entry.seen += m.seen;
        entry.flagged += m.flagged;
        now.set(m.partition, entry);
      }
      for (const [partition, lag] of Object.entries(replica.lag || {})) {
        const entry = now.get(Number(partition)) || {seen: 0, flagged: 0, lag: null};
        entry.lag = (entry.lag || 0) + lag;
        now.set(Number(partition), entry);
      }
    }
    for (const [partition, entry] of now) {
      const list = state.samples.get(partition) || [];
      list.push({t, ...entry});
      if (list.length > KEEP) list.splice(0, list.length - KEEP);
      state.samples.set(partition, list);
    }
  }

  function derived(list, i, what) {
    const s = list[i];
    if (what === "lag") return s.lag;
    const back = Math.min(i, what === "tps" ? RATE_WINDOW : FLAG_WINDOW);
    if (i < 1 || back < 1) return null;
    const p = list[i - back];
    const seen = s.seen - p.seen;
    const flagged = s.flagged - p.flagged;
    if (seen < 0 || flagged < 0) return null; // a restart or a moved partition: no rate across it
    if (what === "tps") return s.t > p.t ? seen / (s.t - p.t) : null;
    return seen > 0 ? flagged / seen : null;
  }

  // -- charts (inline SVG) --

  const W = 420, H = 170, M = {left: 48, right: 10, top: 10, bottom: 22};

  function axes(node, ymax, yfmt, xlabels) {
    const plotH = H - M.top - M.bottom;
    for (const frac of [0, 0.5, 1]) {
      const y = M.top + plotH * (1 - frac);
      node.append(svg("line", {x1: M.left, x2: W - M.right, y1: y, y2: y, class: "gridline"}));
      node.append(svg("text", {x: M.left - 4, y: y + 4, class: "tick", "text-anchor": "end"}, yfmt(ymax * frac)));
    }
    xlabels.forEach(([x, text, anchor]) => {
      node.append(svg("text", {x, y: H - 6, class: "tick", "text-anchor": anchor}, text));
    });
  }

  function lineChart(node, what, yfmt) {
    node.replaceChildren();
    const now = Date.now() / 1000;
    const oldest = Math.min(now, ...[...state.samples.values()].map((list) => list[0].t));
    const span = Math.min(Math.max(now - oldest, 60), (KEEP * POLL_MS) / 1000); // 1 to 6 minutes
    const lines = [];
    let ymax = 0;
    for (const [partition, list] of [...state.samples].sort((a, b) => a[0] - b[0])) {
      const points = list.map((s, i) => [s.t, derived(list, i, what)]);
      for (const [, v] of points) if (v !== null && v > ymax) ymax = v;
      lines.push([partition, points]);
    }
    ymax = ymax > 0 ? ymax * 1.1 : 1;
    const ago = span >= 120 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`;
    axes(node, ymax, yfmt, [[M.left, ago, "start"], [W - M.right, "now", "end"]]);
    const x = (t) => M.left + ((t - (now - span)) / span) * (W - M.left - M.right);
    const y = (v) => M.top + (H - M.top - M.bottom) * (1 - v / ymax);
    for (const [partition, points] of lines) {
      let segment = [];
      const flush = () => {
        if (segment.length > 1) {
          node.append(svg("polyline", {points: segment.join(" "), class: "series", stroke: color(partition)}));
        } else if (segment.length === 1) {
          const [cx, cy] = segment[0].split(",");
          node.append(svg("circle", {cx, cy, r: 2, fill: color(partition)}));
        }
        segment = [];
      };
      for (const [t, v] of points) {
        if (v === null || t < now - span) flush();
        else segment.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      }
      flush();
    }
  }

  function scoreChart(node, models, anomalies) {
    node.replaceChildren();
    const bins = models.find((m) => m.score_histogram && m.score_histogram.length)?.score_histogram.length || 0;
    if (!bins) {
      node.append(svg("text", {x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle"}, "no scores yet"));
      return;
    }
    const total = new Array(bins).fill(0);
    let weights = 0;
    for (const m of models) {
      if (!m.score_histogram || m.score_histogram.length !== bins) continue;
      m.score_histogram.forEach((share, i) => { total[i] += share * m.seen; });
      weights += m.seen;
    }
    const shares = total.map((v) => (weights > 0 ? v / weights : 0));
    const floor = -5; // log10 of the smallest share drawn
    const plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    const x = (score) => M.left + score * plotW;
    const y = (share) => M.top + plotH * (1 - (Math.max(Math.log10(share), floor) - floor) / -floor);
    axes(node, 1, (f) => ({0: "0.001%", 0.5: "0.3%", 1: "100%"})[f], [[M.left, "0", "start"], [x(0.5), "score 0.5", "middle"], [W - M.right, "1", "end"]]);
    shares.forEach((share, i) => {
      if (share <= 0) return;
      const top = y(share);
      node.append(svg("rect", {x: x(i / bins) + 0.5, y: top, width: Math.max(plotW / bins - 1, 1),
        height: M.top + plotH - top, class: "bar"}));
    });
    for (const m of models) {
      const tx = x(Math.min(m.threshold, 1));
      const line = svg("line", {x1: tx, x2: tx, y1: M.top, y2: M.top + plotH, class: "threshold", stroke: color(m.partition)});
      line.append(svg("title", {}, `partition ${m.partition}: threshold ${num(m.threshold)}`));
      node.append(line);
    }
    for (const a of anomalies) {
      if (typeof a.score !== "number") continue;
      node.append(svg("circle", {cx: x(Math.min(Math.max(a.score, 0), 1)), cy: M.top + plotH - 3, r: 2.5, class: "flagged"}));
    }
  }

  function legend(partitions) {
    $("legend").replaceChildren(...partitions.map((p) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = color(p);
      return el("span", {class: "legend-item"}, swatch, `partition ${p}`);
    }), el("span", {class: "legend-item"}, el("span", {class: "swatch flagged-swatch"}), "recent anomalies' scores"));
  }

  // -- panels --

  function renderSummary(stats) {
    $("sum-throughput").textContent = `${num(stats.throughput_tx_per_s, 1)} tx/s`;
    $("sum-processed").textContent = num(stats.processed_total, 0);
    $("sum-anomalies").textContent = num(stats.anomalies_total, 0);
    $("sum-flag-rate").textContent = pct(stats.flag_rate);
    $("sum-partitions").textContent = (stats.partitions_served || []).join(", ") || "none";
    $("sum-replicas").textContent = String((stats.replicas || []).length);
    const fb = stats.feedback || {};
    const verdicts = (fb.confirmed || 0) + (fb.false_positive || 0);
    $("sum-precision").textContent = fb.precision == null ? "no verdicts"
      : `${pct(fb.precision)} of ${verdicts}`;
  }

  function renderModels(stats) {
    const rows = [];
    for (const replica of stats.replicas || []) {
      for (const m of replica.models || []) rows.push([replica, m]);
    }
    rows.sort((a, b) => a[1].partition - b[1].partition || String(a[1].perspective).localeCompare(b[1].perspective));
    $("models").tBodies[0].replaceChildren(...rows.map(([replica, m]) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = color(m.partition);
      const lag = replica.lag ? replica.lag[String(m.partition)] : undefined;
      return el("tr", {class: m.warm ? "" : "cold"},
        el("td", {}, swatch, String(m.partition)),
        el("td", {text: m.perspective}),
        el("td", {class: "mono", text: replica.replica}),
        el("td", {text: m.warm ? "warm" : "warming up"}),
        el("td", {class: "num", text: num(m.seen, 0)}),
        el("td", {class: "num", text: m.threshold >= 1 ? "1 (cold)" : num(m.threshold)}),
        el("td", {class: "num", text: num(m.drift, 4)}),
        el("td", {class: "num", text: m.checkpoint_age_seconds === null ? "–" : `${num(m.checkpoint_age_seconds, 0)} s`}),
        el("td", {class: "num", text: lag === undefined ? "–" : num(lag, 0)}),
        el("td", {class: "num", text: num(m.flagged, 0)}));
    }));
  }

  function renderCharts() {
    lineChart($("chart-throughput"), "tps", tick);
    lineChart($("chart-lag"), "lag", tick);
    lineChart($("chart-flag-rate"), "flag", (v) => `${tick(100 * v)}%`);
    const perspective = $("score-perspective").value;
    const models = [];
    for (const replica of (state.stats && state.stats.replicas) || []) {
      for (const m of replica.models || []) if (m.perspective === perspective) models.push(m);
    }
    scoreChart($("chart-scores"), models, state.anomalies.filter((a) => a.perspective === perspective));
    legend([...state.samples.keys()].sort((a, b) => a - b));
  }

  function renderAnomalies() {
    const f = filters();
    const shown = state.anomalies.filter((d) => matches(d, f));
    for (const d of state.anomalies) {
      for (const r of Array.isArray(d.reasons) ? d.reasons : []) addReasonOption(r && r.rule);
    }
    const key = shown.map(keyOf).join(",") + `|${state.selected}`;
    $("count").textContent = `${shown.length} shown of ${state.anomalies.length} listed` +
      (state.anomalies.length >= LIMIT ? ` (the newest ${LIMIT})` : "");
    $("count").dataset.shown = String(shown.length);
    if (key === state.shownKey) return; // nothing changed: keep the rows (and a click on them)
    state.shownKey = key;
    $("anomalies").tBodies[0].replaceChildren(...shown.map((d) => {
      const row = el("tr", {tabindex: "0", class: `sev-${["high", "medium", "low"].includes(d.severity) ? d.severity : "other"}`},
        el("td", {text: clock(d.detected_at)}),
        el("td", {}, el("span", {class: "badge", text: String(d.severity)})),
        el("td", {class: "num", text: num(d.score)}),
        el("td", {class: "num", text: num(d.threshold)}),
        el("td", {text: String(d.perspective)}),
        el("td", {class: "mono address", title: String(d.address), text: String(d.address)}),
        el("td", {text: String(d.kind)}),
        el("td", {class: "num", text: typeof d.value_eth === "number" ? `${num(d.value_eth, 4)} ETH` : "–"}),
        el("td", {text: (Array.isArray(d.reasons) ? d.reasons : []).map((r) => r && r.rule).join(", ")}),
        el("td", {class: "num", text: d.source ? String(d.source.partition) : "–"}));
      row.dataset.tx = String(d.tx_hash);
      row.dataset.key = keyOf(d);
      if (keyOf(d) === state.selected) row.classList.add("selected");
      return row;
    }));
  }

  function addReasonOption(rule) {
    if (typeof rule !== "string" || !rule) return;
    const select = $("f-reason");
    if ([...select.options].some((o) => o.value === rule)) return;
    select.append(el("option", {value: rule}, rule));
  }

  // -- the detail view --

  function field(dl, name, value) {
    dl.append(el("dt", {text: name}), el("dd", {}, value instanceof Node ? value : (value === null || value === undefined ? "–" : String(value))));
  }

  const TIME_KEY = /(^|_)(seen|at|since|time|timestamp)$/; // unix seconds in the API's documents

  function keyValues(object) {
    const dl = el("dl", {class: "kv"});
    for (const [name, value] of Object.entries(object || {})) {
      let shown = value;
      if (typeof value === "string" && ADDRESS_RE.test(value.toLowerCase())) shown = etherscan("address", value);
      else if (typeof value === "number" && TIME_KEY.test(name) && value > 1e8) shown = isoTime(value);
      else if (typeof value === "number") shown = num(value, 6);
      else if (typeof value === "boolean") shown = value ? "yes" : "no";
      field(dl, name, shown);
    }
    return dl;
  }

  function showDetail(d) {
    state.selected = keyOf(d);
    state.shownKey = null;
    renderAnomalies();
    const body = $("detail-body");
    const summary = el("dl", {class: "kv"});
    field(summary, "tx hash", el("span", {class: "mono", id: "detail-hash", text: String(d.tx_hash)}));
    field(summary, "etherscan", HASH_RE.test(String(d.tx_hash)) ?
      el("a", {id: "detail-etherscan", href: `https://etherscan.io/tx/${d.tx_hash}`, target: "_blank", rel: "noopener noreferrer"}, "view the transaction") : "–");
    field(summary, "address", etherscan("address", d.address));
    field(summary, "perspective", d.perspective);
    field(summary, "severity", d.severity);
    field(summary, "score / threshold", `${num(d.score)} / ${num(d.threshold)}`);
    field(summary, "kind", d.method ? `${d.kind} (${d.method})` : d.kind);
    field(summary, "sender", etherscan("address", d.sender));
    field(summary, "to", etherscan("address", d.to));
    field(summary, "counterparty", etherscan("address", d.counterparty));
    if (d.token) field(summary, "token", etherscan("address", d.token));
    if (d.token_amount !== null && d.token_amount !== undefined) field(summary, "token amount (raw units)", d.token_amount);
    field(summary, "value", typeof d.value_eth === "number" ? `${num(d.value_eth, 6)} ETH` : null);
    field(summary, "gas price", typeof d.gas_price_gwei === "number" ? `${num(d.gas_price_gwei, 3)} gwei` : null);
    field(summary, "block", d.block_number);
    field(summary, "event time", isoTime(d.event_time));
    field(summary, "detected", isoTime(d.detected_at));
    field(summary, "source", d.source ? `partition ${d.source.partition}, offset ${d.source.offset}` : null);
    field(summary, "alert key", d.alert_key);

    const reasons = el("ul", {class: "reasons"});
    for (const r of Array.isArray(d.reasons) ? d.reasons : []) {
      const rest = Object.fromEntries(Object.entries(r || {}).filter(([k]) => k !== "rule"));
      reasons.append(el("li", {class: `reason reason-${String(r && r.rule).replace(/[^a-z_]/g, "")}`},
        el("strong", {text: String(r && r.rule)}), keyValues(rest)));
    }

    const explanation = el("table", {class: "grid"},
      el("thead", {}, el("tr", {}, el("th", {text: "feature"}), el("th", {class: "num", text: "value"}),
        el("th", {class: "num", text: "typical"}), el("th", {class: "num", text: "deviation (robust σ)"}))),
      el("tbody", {}, ...(Array.isArray(d.explanation) ? d.explanation : []).map((e) => el("tr", {},
        el("td", {class: "mono", text: String(e.feature)}), el("td", {class: "num", text: num(e.value, 4)}),
        el("td", {class: "num", text: num(e.typical, 4)}), el("td", {class: "num", text: num(e.deviation, 2)})))));

    const onchain = d.onchain ? keyValues(d.onchain) :
      el("p", {class: "muted", text: "not enriched (ENRICH_ONCHAIN off, or the node did not answer in time)"});
    const profile = el("div", {id: "detail-profile"}, el("p", {class: "muted", text: "loading…"}));

    body.replaceChildren(summary,
      el("h3", {text: "Reasons"}), reasons,
      el("h3", {text: "Explanation"}), explanation,
      el("h3", {text: "On-chain facts"}), onchain,
      el("h3", {text: "Address profile"}), profile);
    $("detail").hidden = false;
    loadProfile(d.address, profile);
  }

  async function loadProfile(address, node) {
    if (!ADDRESS_RE.test(String(address))) {
      node.replaceChildren(el("p", {class: "muted", text: "no address"}));
      return;
    }
    try {
      const p = await getJSON(`/api/v1/addresses/${address}`);
      node.replaceChildren(el("p", {class: "muted", text: `partition ${p.partition}; ${(p.anomalies || []).length} recent anomalies`}),
        keyValues(p.profile));
    } catch (error) {
      node.replaceChildren(el("p", {class: "muted", text: error.status === 404 ? "not seen (or expired)" : error.message}));
    }
  }

  function closeDetail() {
    $("detail").hidden = true;
    state.selected = null;
    state.shownKey = null;
    if (location.hash) history.replaceState(null, "", location.pathname);
    renderAnomalies();
  }

  async function openFromHash() {
    const match = /^#tx=(0x[0-9a-f]{64})(?::(sender|receiver))?$/.exec(location.hash);
    if (!match) return;
    const [, hash, perspective] = match;
    const known = state.anomalies.find((d) => d.tx_hash === hash && (!perspective || d.perspective === perspective));
    if (known) {
      showDetail(known);
      return;
    }
    try {
      showDetail(await getJSON(`/api/v1/anomalies/${hash}`));
    } catch (error) {
      setStatus(`anomaly ${short(hash)}: ${error.message}`, true);
    }
  }

  // -- polling --

  function setStatus(text, bad = false) {
    $("status").textContent = text;
    $("status").classList.toggle("bad", bad);
  }

  async function refreshListing() {
    const seq = ++state.listingSeq;
    const f = filters();
    const listing = await getJSON(listingPath(f));
    if (seq !== state.listingSeq) return; // a newer request (the filters changed) answers instead
    state.anomalies = Array.isArray(listing.items) ? listing.items : [];
    renderAnomalies();
  }

  async function poll() {
    try {
      const [stats] = await Promise.all([getJSON("/api/v1/stats"), refreshListing()]);
      state.stats = stats;
      record(stats, Date.now() / 1000);
      renderSummary(stats);
      renderModels(stats);
      renderCharts();
      setStatus(`live: updated ${new Date().toLocaleTimeString("en-GB")}, every ${POLL_MS / 1000} s`);
      if (!document.body.dataset.loadedMs) {
        document.body.dataset.loadedMs = String(Math.round(performance.now()));
        openFromHash();
      }
    } catch (error) {
      setStatus(`not updated: ${error.message}`, true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  let debounce = null;
  function filtersChanged() {
    renderAnomalies(); // client-side filters at once
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      refreshListing().catch((error) => setStatus(`not updated: ${error.message}`, true));
    }, 200);
  }

  function start() {
    const form = $("filters");
    form.addEventListener("input", filtersChanged);
    form.addEventListener("change", filtersChanged);
    form.addEventListener("submit", (event) => event.preventDefault());
    form.addEventListener("reset", () => setTimeout(filtersChanged, 0));
    $("score-perspective").addEventListener("change", renderCharts);
    $("detail-close").addEventListener("click", closeDetail);
    $("auth").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
      $("api-key").value = "";
      $("auth").hidden = true;
      refreshListing().catch((error) => setStatus(`not updated: ${error.message}`, true));
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("detail").hidden) closeDetail();
    });
    const open = (event) => {
      const row = event.target.closest("tr[data-key]");
      if (!row) return;
      const d = state.anomalies.find((a) => keyOf(a) === row.dataset.key);
      if (!d) return;
      history.replaceState(null, "", `#tx=${d.tx_hash}:${d.perspective}`);
      showDetail(d);
    };
    const tbody = $("anomalies").tBodies[0];
    tbody.addEventListener("click", open);
    tbody.addEventListener("keydown", (event) => { if (event.key === "Enter") open(event); });
    window.addEventListener("hashchange", openFromHash);
    poll();
  }

  start();
})();
