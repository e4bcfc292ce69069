// RelayPACS dashboard: the SVG pieces every chart script draws with (dashboard.js,
// forecast.js), so all plots share one size and one axis: an element builder, an empty
// plot with its axis, and a text label. Loaded first (base.html's head, deferred scripts
// run in document order).
"use strict";
window.RelayPACSPlot = (function () {
  var SVG = "http://www.w3.org/2000/svg";
  var W = 560, H = 180, PAD = 28;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function frame(container) {
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "class": "plot" });
    container.appendChild(svg);
    el("line", { x1: PAD, y1: H - PAD, x2: W - 4, y2: H - PAD, "class": "axis" }, svg);
    return svg;
  }

  function label(svg, x, y, text, cls) {
    var t = el("text", { x: x, y: y, "class": cls || "tick" }, svg);
    t.textContent = text;
    return t;
  }

  return { W: W, H: H, PAD: PAD, el: el, frame: frame, label: label };
})();
