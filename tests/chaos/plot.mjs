// The soak's timeline as one self-contained SVG: orders accepted and tab notifications per
// second, tabs connected, the RSS of every process lifetime, and a marker for every fault.

const W = 1400;
const LEFT = 70;
const RIGHT = 190; // room for the legend
const PLOT_W = W - LEFT - RIGHT;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

/** Rate per second of a cumulative series, averaged over `window` seconds. */
function rate(samples, key, window = 5) {
  const out = [];
  for (let i = 0; i < samples.length; i += 1) {
    let j = i;
    while (j > 0 && samples[i].t - samples[j - 1].t <= window) j -= 1;
    const dt = samples[i].t - samples[j].t;
    out.push([samples[i].t, dt > 0 ? (samples[i][key] - samples[j][key]) / dt : 0]);
  }
  return out;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function panel({ top, height, title, series, tMax, yLabel, faults }) {
  const yMax = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))) * 1.05);
  const x = (t) => LEFT + (t / tMax) * PLOT_W;
  const y = (v) => top + height - (v / yMax) * height;
  const parts = [];
  parts.push(`<rect x="${LEFT}" y="${top}" width="${PLOT_W}" height="${height}" fill="#fafafa" stroke="#999"/>`);
  parts.push(`<text x="${LEFT}" y="${top - 6}" font-size="13" font-weight="bold">${esc(title)}</text>`);
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    parts.push(`<line x1="${LEFT}" x2="${LEFT + PLOT_W}" y1="${y(v)}" y2="${y(v)}" stroke="#e4e4e4"/>`);
    parts.push(`<text x="${LEFT - 6}" y="${y(v) + 4}" font-size="11" text-anchor="end">${fmt(v)}</text>`);
  }
  parts.push(`<text transform="translate(16 ${top + height / 2}) rotate(-90)" font-size="11" text-anchor="middle">${esc(yLabel)}</text>`);
  for (const f of faults) {
    parts.push(`<line x1="${x(f.t)}" x2="${x(f.t)}" y1="${top}" y2="${top + height}" stroke="#d62728" stroke-opacity="0.45" stroke-dasharray="4 3"/>`);
    if (f.end > f.t) parts.push(`<rect x="${x(f.t)}" y="${top}" width="${Math.max(1, x(f.end) - x(f.t))}" height="${height}" fill="#d62728" fill-opacity="0.06"/>`);
  }
  series.forEach((s, i) => {
    const color = s.color ?? COLORS[i % COLORS.length];
    for (const segment of s.segments ?? [s.points]) {
      if (segment.length === 0) continue;
      const d = segment.map((p, k) => `${k === 0 ? "M" : "L"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="1.5"/>`);
    }
  });
  // legend
  series.forEach((s, i) => {
    const color = s.color ?? COLORS[i % COLORS.length];
    const ly = top + 12 + i * 15;
    if (ly > top + height + 40) return;
    parts.push(`<line x1="${LEFT + PLOT_W + 12}" x2="${LEFT + PLOT_W + 30}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2"/>`);
    parts.push(`<text x="${LEFT + PLOT_W + 34}" y="${ly}" font-size="11">${esc(s.label)}</text>`);
  });
  return parts.join("\n");
}

/**
 * `samples`: [{t (s), accepted (cumulative), notifications (cumulative), connected}];
 * `lifetimes`: [{name, pid, rss: [[t (s), KiB]]}]; `faults`: [{t, end (s), label}].
 */
export function timelineSvg({ samples, lifetimes, faults, title, phases = [] }) {
  const tMax = Math.max(1, ...samples.map((s) => s.t), ...faults.map((f) => f.end ?? f.t));
  const parts = [];
  const top0 = 150;
  const h1 = 200;
  const h2 = 90;
  const h3 = 280;
  const gap = 45;
  const height = top0 + h1 + gap + h2 + gap + h3 + 60;
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" font-family="sans-serif">`);
  parts.push(`<rect width="100%" height="100%" fill="white"/>`);
  parts.push(`<text x="${LEFT}" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`);
  const x = (t) => LEFT + (t / tMax) * PLOT_W;
  // Fault labels, staggered over a few rows so they stay readable.
  faults.forEach((f, i) => {
    const row = i % 4;
    const ty = 50 + row * 24;
    parts.push(`<line x1="${x(f.t)}" x2="${x(f.t)}" y1="${ty + 3}" y2="${top0 - 22}" stroke="#d62728" stroke-opacity="0.3"/>`);
    parts.push(`<text x="${x(f.t) + 2}" y="${ty}" font-size="10" fill="#a00">${esc(f.label)}</text>`);
  });
  phases.forEach((p, i) => {
    parts.push(`<line x1="${x(p.t)}" x2="${x(p.t)}" y1="${top0 - 20 - (i % 3) * 11}" y2="${height - 50}" stroke="#333" stroke-dasharray="1 3"/>`);
    parts.push(`<text x="${x(p.t) + 3}" y="${top0 - 24 - (i % 3) * 11}" font-size="10" fill="#333">${esc(p.label)}</text>`);
  });
  parts.push(panel({
    top: top0, height: h1, tMax, faults, yLabel: "per second (5 s average)",
    title: "orders accepted (202) and tab notifications, per second",
    series: [
      { label: "orders accepted/s", points: rate(samples, "accepted"), color: "#1f77b4" },
      { label: "tab notifications/s", points: rate(samples, "notifications"), color: "#2ca02c" },
      { label: "transport arrivals/s", points: rate(samples, "arrivals"), color: "#bcbd22" },
    ],
  }));
  parts.push(panel({
    top: top0 + h1 + gap, height: h2, tMax, faults, yLabel: "tabs", title: "tabs connected",
    series: [{ label: "connected", points: samples.map((s) => [s.t, s.connected]), color: "#9467bd" }],
  }));
  const names = [...new Set(lifetimes.map((l) => l.name))].sort();
  parts.push(panel({
    top: top0 + h1 + gap + h2 + gap, height: h3, tMax, faults, yLabel: "MiB", title: "RSS per process (one line per lifetime)",
    series: names.map((name, i) => ({
      label: name,
      color: COLORS[i % COLORS.length],
      points: lifetimes.filter((l) => l.name === name).flatMap((l) => l.rss.map(([t, kib]) => [t, kib / 1024])),
      segments: lifetimes.filter((l) => l.name === name).map((l) => l.rss.map(([t, kib]) => [t, kib / 1024])),
    })),
  }));
  const axisY = height - 40;
  const step = niceMax(tMax / 10);
  for (let t = 0; t <= tMax; t += step) {
    parts.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${axisY - 8}" y2="${axisY - 3}" stroke="#333"/>`);
    parts.push(`<text x="${x(t)}" y="${axisY + 10}" font-size="11" text-anchor="middle">${t.toFixed(0)}</text>`);
  }
  parts.push(`<text x="${LEFT + PLOT_W / 2}" y="${axisY + 28}" font-size="12" text-anchor="middle">seconds since the start of the soak</text>`);
  parts.push("</svg>");
  return parts.join("\n");
}
