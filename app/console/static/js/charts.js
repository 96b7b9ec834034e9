// Hand-written SVG charts (no library): line charts that grow as points arrive, horizontal bars, a heat map.
// Each chart exposes what it shows as data attributes (data-points), for people with devtools and for tests.

import { h, s, clear } from "./dom.js";

export const COLORS = ["#2f6fed", "#e5753a", "#1a8f4c", "#9b4dca", "#c23b30", "#0f9fb0"];

// A line chart of named series keyed by step. add(name, x, y) then it redraws itself (at most ~4 times a second).
export class LineChart {
  constructor(title, names, { logY = false } = {}) {
    this.names = names;
    this.series = new Map(names.map((n) => [n, []]));
    this.logY = logY;
    this.svg = s("svg", { class: "chart", viewBox: "0 0 600 220", preserveAspectRatio: "none" });
    this.legend = h("div", { class: "legend" },
      names.map((n, i) => h("span", {}, h("i", { style: { background: COLORS[i % COLORS.length] } }), n)));
    this.el = h("div", { class: "card chart-card", "data-chart": title, "data-points": 0 },
      h("h2", {}, title), this.legend, this.svg);
    this.pending = null;
    this.draw();
  }

  add(name, x, y) {
    const pts = this.series.get(name);
    if (!pts || !Number.isFinite(y)) return;
    if (pts.length && pts[pts.length - 1][0] >= x) {
      // out of order or a repeat (a resumed job re-logs no step, but be safe): keep the series sorted and unique
      const i = pts.findIndex((p) => p[0] >= x);
      if (pts[i][0] === x) pts[i] = [x, y]; else pts.splice(i, 0, [x, y]);
    } else {
      pts.push([x, y]);
    }
    this.el.dataset.points = String(this.count());  // at once, though the drawing waits for the next redraw
    this.schedule();
  }

  count() { let n = 0; for (const p of this.series.values()) n += p.length; return n; }

  schedule() {
    if (this.pending) return;
    this.pending = setTimeout(() => { this.pending = null; this.draw(); }, 250);
  }

  draw() {
    const W = 600, H = 220, L = 48, R = 10, T = 8, B = 22;
    clear(this.svg);
    this.el.dataset.points = String(this.count());
    const all = [...this.series.values()].flat();
    if (!all.length) {
      this.svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no points yet"));
      return;
    }
    const ty = (v) => (this.logY ? Math.log10(Math.max(v, 1e-12)) : v);
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => ty(p[1]))), Math.max(...all.map((p) => ty(p[1])))];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const pad = (y1 - y0) * 0.05;
    y0 = !this.logY && y0 >= 0 && y0 - pad < 0 ? 0 : y0 - pad;  // a rate or a loss never dips below 0 on the axis
    y1 += pad;
    const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const Y = (y) => T + (1 - (ty(y) - y0) / (y1 - y0)) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = y0 + ((y1 - y0) * i) / 4;
      const y = T + (1 - i / 4) * (H - T - B);
      this.svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      this.svg.append(s("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, tick(this.logY ? 10 ** v : v)));
    }
    this.svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    for (let i = 0; i <= 4; i++) {
      const v = x0 + ((x1 - x0) * i) / 4;
      this.svg.append(s("text", { x: X(v), y: H - 6, "text-anchor": "middle" }, String(Math.round(v))));
    }
    let i = 0;
    for (const [, pts] of this.series) {
      const color = COLORS[i++ % COLORS.length];
      if (!pts.length) continue;
      const every = Math.ceil(pts.length / 1500);  // draw at most ~1500 points a series; the last always
      const shown = every > 1 ? pts.filter((_, j) => j % every === 0 || j === pts.length - 1) : pts;
      const d = shown.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
      this.svg.append(s("path", { class: "line", d, stroke: color }));
      if (pts.length < 40) for (const p of pts) this.svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: color }));
    }
  }
}

// An axis label: 3 significant digits, no exponent for ordinary numbers.
function tick(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  if (a >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

// Horizontal bars: rows of [label, value]; `max` sets the full width (default: the largest value).
export function bars(rows, { max, format = (v) => String(v) } = {}) {
  const top = max ?? Math.max(1e-12, ...rows.map((r) => r[1]));
  return h("div", { class: "bars" }, rows.map(([label, value, color]) =>
    h("div", { class: "bar-row", "data-label": label, "data-value": value },
      h("span", { class: "label", title: label }, label),
      h("div", { class: "track" }, h("div", { class: "fill", style: { width: `${(100 * value) / top}%`, ...(color ? { background: color } : {}) } })),
      h("span", { class: "num" }, format(value)))));
}

// A confusion-matrix heat map: rows are true labels, columns predicted labels, names on both axes.
export function heatmap(labels, matrix) {
  const n = labels.length;
  const cell = n > 20 ? 18 : n > 10 ? 28 : 44;
  const longest = Math.max(...labels.map((l) => l.length));
  const gutter = Math.min(200, 34 + longest * 7);
  const W = gutter + n * cell + 10, H = gutter + n * cell + 10;
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-testid": "confusion-matrix" });
  const rowMax = matrix.map((r) => Math.max(1, ...r));
  svg.append(s("text", { x: gutter + (n * cell) / 2, y: 12, "text-anchor": "middle", class: "axis-title" }, "predicted label"));
  svg.append(s("text", { x: 12, y: gutter + (n * cell) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${gutter + (n * cell) / 2})` }, "true label"));
  labels.forEach((label, j) => {
    const x = gutter + j * cell + cell / 2;
    svg.append(s("text", { class: "col-label", x, y: gutter - 6, "text-anchor": "start", transform: `rotate(-45 ${x} ${gutter - 6})` }, label));
  });
  labels.forEach((label, i) => {
    const y = gutter + i * cell + cell / 2 + 4;
    svg.append(s("text", { class: "row-label", x: gutter - 6, y, "text-anchor": "end" }, label));
    matrix[i].forEach((v, j) => {
      const share = v / rowMax[i];
      const color = i === j ? `rgba(26,143,76,${0.1 + 0.9 * share})` : `rgba(194,59,48,${v ? 0.1 + 0.9 * share : 0.03})`;
      const rect = s("rect", { x: gutter + j * cell, y: gutter + i * cell, width: cell - 1, height: cell - 1, fill: color });
      rect.append(s("title", {}, `true ${label}, predicted ${labels[j]}: ${v}`));
      svg.append(rect);
      if (cell >= 28) svg.append(s("text", { x: gutter + j * cell + cell / 2, y: gutter + i * cell + cell / 2 + 4, "text-anchor": "middle" }, String(v)));
    });
  });
  return h("div", { class: "heatmap" }, svg);
}

// A reliability diagram: per confidence bin, the accuracy (bars) against the confidence (the diagonal is perfect
// calibration); `after` (the bins after temperature scaling) as dots. Empty bins draw nothing.
export function reliability(bins, after) {
  const W = 320, H = 240, L = 40, R = 10, T = 10, B = 34;
  const X = (v) => L + v * (W - L - R), Y = (v) => T + (1 - v) * (H - T - B);
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-testid": "reliability", "data-bins": bins.length });
  for (let i = 0; i <= 4; i++) {
    const v = i / 4;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
    svg.append(s("text", { x: L - 4, y: Y(v) + 3, "text-anchor": "end" }, String(v)));
    svg.append(s("text", { x: X(v), y: H - B + 14, "text-anchor": "middle" }, String(v)));
  }
  svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, "confidence"));
  svg.append(s("text", { x: 10, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 10 ${(T + H - B) / 2})` }, "accuracy"));
  bins.forEach((b) => {
    if (!b.count) return;
    const rect = s("rect", { class: "reliability-bar", x: X(b.lower) + 1, y: Y(b.accuracy), width: X(b.upper) - X(b.lower) - 2,
      height: Y(0) - Y(b.accuracy), fill: COLORS[0], "fill-opacity": 0.75, "data-count": b.count });
    rect.append(s("title", {}, `confidence ${b.lower.toFixed(2)}–${b.upper.toFixed(2)}: ${b.count} examples, accuracy ${b.accuracy.toFixed(3)}, mean confidence ${b.confidence.toFixed(3)}`));
    svg.append(rect);
  });
  (after || []).forEach((b) => {
    if (b.count) svg.append(s("circle", { cx: X((b.lower + b.upper) / 2), cy: Y(b.accuracy), r: 3, fill: COLORS[1] }));
  });
  svg.append(s("line", { class: "axis", x1: X(0), y1: Y(0), x2: X(1), y2: Y(1), "stroke-dasharray": "4 3" }));
  return h("div", { class: "reliability" }, svg);
}
