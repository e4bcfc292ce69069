// RelayPACS dashboard: draws the charts from the JSON the server embedded in the page, as
// plain SVG (no library, no build step), and makes table rows clickable for drill-down.
// Live: the page listens to the event stream (body[data-events-url]) and adds each upload
// and delivery of its scope to the numbers at once; a little later it fetches the page's
// data again (?format=json) and keeps only the events newer than the stats' "as_of", so
// the counts never drift from the materialised stats.
"use strict";
(function () {
  var plot = window.RelayPACSPlot;
  var W = plot.W, H = plot.H, PAD = plot.PAD, el = plot.el, frame = plot.frame, label = plot.label;

  function shortTime(iso, granularity) {
    return granularity === "hour" ? iso.slice(5, 13).replace("T", " ") + "h" : iso.slice(5, 10);
  }

  function bars(container, values, labels, title) {
    var svg = frame(container);
    var max = Math.max.apply(null, values.concat([1]));
    var n = Math.max(values.length, 1), step = (W - PAD - 8) / n;
    values.forEach(function (v, i) {
      var h = (H - 2 * PAD) * v / max;
      var bar = el("rect", { x: PAD + i * step + 1, y: H - PAD - h, width: Math.max(step - 2, 1), height: h,
                             "class": "bar" }, svg);
      el("title", {}, bar).textContent = labels[i] + ": " + v.toLocaleString();
    });
    var every = Math.ceil(n / 8);
    labels.forEach(function (l, i) { if (i % every === 0) label(svg, PAD + i * step, H - PAD + 14, l); });
    label(svg, 2, PAD - 6, max.toLocaleString() + (title ? " " + title : ""));
    if (!values.length) label(svg, W / 2 - 30, H / 2, "no data", "empty");
  }

  function hbars(container, mix) {
    var keys = Object.keys(mix);
    var svg = frame(container);
    var max = Math.max.apply(null, keys.map(function (k) { return mix[k]; }).concat([1]));
    var row = Math.min(24, (H - 2 * PAD) / Math.max(keys.length, 1));
    keys.forEach(function (k, i) {
      var w = (W - 200) * mix[k] / max;
      label(svg, 4, PAD + i * row + row * 0.7, k);
      el("rect", { x: 150, y: PAD + i * row + 2, width: Math.max(w, 1), height: row - 4,
                   "class": "bar status-" + k.replace(/[^a-z]/g, "") }, svg);
      label(svg, 154 + w, PAD + i * row + row * 0.7, mix[k].toLocaleString());
    });
    if (!keys.length) label(svg, W / 2 - 30, H / 2, "no data", "empty");
  }

  function lines(container, series, granularity) {
    var svg = frame(container);
    var p50 = series.map(function (p) { return p.latency.p50_ms; });
    var p95 = series.map(function (p) { return p.latency.p95_ms; });
    var max = Math.max.apply(null, p95.concat(p50).filter(function (v) { return v !== null; }).concat([1]));
    var n = Math.max(series.length - 1, 1);
    [[p50, "p50"], [p95, "p95"]].forEach(function (pair) {
      var pts = [];
      pair[0].forEach(function (v, i) {
        if (v === null) return;
        pts.push((PAD + i * (W - PAD - 8) / n).toFixed(1) + "," + (H - PAD - (H - 2 * PAD) * v / max).toFixed(1));
      });
      if (pts.length) el("polyline", { points: pts.join(" "), "class": "line " + pair[1] }, svg);
    });
    label(svg, 2, PAD - 6, (max / 1000).toFixed(1) + " s (p50 solid, p95 dashed)");
    var every = Math.ceil(series.length / 8);
    series.forEach(function (p, i) {
      if (i % every === 0) label(svg, PAD + i * (W - PAD - 8) / n, H - PAD + 14, shortTime(p.t, granularity));
    });
    if (!series.length) label(svg, W / 2 - 30, H / 2, "no data", "empty");
  }

  var state = { data: null, pending: [], applied: 0 };

  function drawCharts(data) {
    var g = data.range.granularity;
    document.querySelectorAll("[data-chart]").forEach(function (c) {
      var kind = c.getAttribute("data-chart");
      if (kind !== "volume" && kind !== "status" && kind !== "latency") return;
      while (c.firstChild) c.removeChild(c.firstChild);
      if (kind === "volume") {
        bars(c, data.series.map(function (p) { return p.uploads; }),
             data.series.map(function (p) { return shortTime(p.t, g); }), "uploads");
      } else if (kind === "status") {
        hbars(c, data.status_mix || {});
      } else {
        lines(c, data.series, g);
      }
    });
  }

  // The server's number formats (api/dashboard/pages.py filters), for values updated in place.
  function count(v) { return Number(v || 0).toLocaleString("en-US"); }
  function filesize(v) {
    var size = Number(v || 0), units = ["B", "KB", "MB", "GB", "TB"];
    for (var i = 0; i < units.length; i++) {
      if (size < 1024 || i === units.length - 1) return i === 0 ? size.toFixed(0) + " B" : size.toFixed(1) + " " + units[i];
      size /= 1024;
    }
  }
  function duration(ms) {
    if (ms === null || ms === undefined) return "\u2013";
    if (ms < 1000) return ms.toFixed(0) + " ms";
    if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
    return (ms / 60000).toFixed(1) + " min";
  }
  var FORMATS = {
    uploads: function (m) { return count(m.uploads); },
    bytes: function (m) { return filesize(m.bytes); },
    studies: function (m) { return count(m.studies); },
    quarantined: function (m) { return count(m.quarantined); },
    delivered: function (m) { return count(m.delivered); },
    pending_failed: function (m) { return m.pending_deliveries + " / " + m.failed_deliveries; },
    latency: function (m) { return duration(m.latency.p50_ms) + " / " + duration(m.latency.p95_ms); },
    p95: function (m) { return duration(m.latency.p95_ms); }
  };

  function fill(scope, measures) {
    scope.querySelectorAll("[data-measure]").forEach(function (cell) {
      var format = FORMATS[cell.getAttribute("data-measure")];
      if (format) cell.textContent = format(measures);
    });
  }

  function render(data) {
    var cards = document.getElementById("cards");
    if (cards) fill(cards, data.totals);
    (data.facilities || data.users || []).forEach(function (row) {
      var tr = document.querySelector("tr[data-row='" + row.id + "']");
      if (tr) fill(tr, row);
    });
    drawCharts(data);
  }

  // --- live updates --------------------------------------------------------------------

  function bump(measures, add) {
    Object.keys(add).forEach(function (k) { measures[k] = (measures[k] || 0) + add[k]; });
  }

  function bucketOf(series, t) {
    var found = null;
    series.forEach(function (p) { if (Date.parse(p.t) <= t) found = p; });
    return found;
  }

  // What one event adds to the materialised measures (uploads are counted when created).
  function delta(e) {
    if (e.type === "upload.initiated") return { uploads: 1, bytes: e.length || 0 };
    if (e.type === "study.forwarded") return { delivered: e.delivered || 0, failed_deliveries: e.failed || 0 };
    return null;
  }

  function withPending(server) {
    var data = JSON.parse(JSON.stringify(server));
    var from = Date.parse(data.range.from), to = Date.parse(data.range.to);
    state.pending.forEach(function (e) {
      var add = delta(e), t = Date.parse(e.at);
      if (!add || t < from || t >= to) return;
      bump(data.totals, add);
      var bucket = bucketOf(data.series, t);
      if (bucket) bump(bucket, add);
      (data.facilities || []).forEach(function (f) { if (f.id === e.facility_id) bump(f, add); });
      (data.users || []).forEach(function (u) { if (e.user_id && u.id === e.user_id) bump(u, add); });
    });
    return data;
  }

  function inScope(e) {
    var facility = document.body.getAttribute("data-facility-id");
    var user = document.body.getAttribute("data-user-id");
    if (facility && String(e.facility_id) !== facility) return false;
    return !user || String(e.user_id) === user;
  }

  var refetchTimer = null;
  function refetch() {
    refetchTimer = null;
    var url = new URL(window.location.href);
    url.searchParams.set("format", "json");
    fetch(url.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (server) {
        if (!server) return;
        var asOf = server.as_of ? Date.parse(server.as_of) : 0;
        state.pending = state.pending.filter(function (e) { return Date.parse(e.at) > asOf; });
        state.data = server;
        render(withPending(server));
        document.body.setAttribute("data-live-refetched", String(Date.now()));
      })
      .catch(function () { /* the next event or tick tries again */ });
  }
  function scheduleRefetch(ms) {
    if (!refetchTimer) refetchTimer = setTimeout(refetch, ms);
  }

  // For other scripts on the page (and tests): fetch the data again now.
  window.relaypacsDashboard = { refetch: function () { clearTimeout(refetchTimer); refetch(); } };

  function live() {
    var url = document.body.getAttribute("data-events-url");
    if (!url || !window.EventSource || !state.data) return;
    var source = new EventSource(url, { withCredentials: true });
    source.onopen = function () { document.body.setAttribute("data-live", "1"); };
    ["upload.initiated", "upload.completed", "study.forwarded"].forEach(function (type) {
      source.addEventListener(type, function (message) {
        var e;
        try { e = JSON.parse(message.data); } catch (err) { return; }
        if (!inScope(e)) return;
        if (delta(e)) {
          state.pending.push(e);
          render(withPending(state.data));
          state.applied += 1;
          document.body.setAttribute("data-live-applied", String(state.applied));
        }
        scheduleRefetch(5000);  // reconcile once the burst is over
      });
    });
    // The stats job runs every minute: pick up what it materialised (quarantines included).
    setInterval(function () { if (!document.hidden) scheduleRefetch(0); }, 60000);
  }

  function draw() {
    var source = document.getElementById("dashboard-data");
    if (!source) return;
    state.data = JSON.parse(source.textContent);
    drawCharts(state.data);
    document.addEventListener("click", function (ev) {
      var row = ev.target.closest && ev.target.closest("tr[data-href]");
      if (row && ev.target.tagName !== "A") window.location.href = row.getAttribute("data-href");
    });
    document.body.setAttribute("data-charts-drawn", "1");
    if (window.performance && performance.mark) performance.mark("charts-drawn");
    live();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
