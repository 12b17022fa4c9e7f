// report.html: a self-contained page (inline CSS and SVG, no script, no external resource) drawn
// from an AnalysisResult: the format chosen per layer × position, curvature per layer, the memory
// breakdown and the quality-vs-bits frontier of the eval rows.
import type { AnalysisResult } from "./analysis_run.ts";
import { pairBits } from "./analysis_run.ts";
import { windowChoiceName } from "./kvprec_rows.ts";

/** Escapes text for HTML. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const _PALETTE = ["#2b83ba", "#abdda4", "#ffffbf", "#fdae61", "#d7191c", "#7b3294", "#1a9641"];

/**
 * Colour of a format pair: cool for few bits, warm for many (window/fp16 darkest).
 * @param bits average bits per element of the pair
 * @returns a CSS colour
 */
export function bitsColour(bits: number): string {
  // 2..17 bits → hue 220 (blue) .. 0 (red)
  const t = Math.max(0, Math.min(1, (bits - 2) / 15));
  return `hsl(${Math.round(220 * (1 - t))},70%,${Math.round(55 - 15 * t)}%)`;
}

function _heatmap(a: AnalysisResult): string {
  const rows = a.heatmap.rows;
  const n = rows[0]?.cells.length ?? 0;
  const cell = Math.max(1, Math.min(4, Math.floor(720 / Math.max(1, n))));
  const rh = 10, left = 60, top = 10;
  const w = left + n * cell + 10, h = top + rows.length * rh + 30;
  const parts: string[] = [];
  rows.forEach((r, i) => {
    const y = top + i * rh;
    parts.push(
      `<text x="${left - 4}" y="${y + 8}" text-anchor="end">L${r.layer} h${r.head}</text>`,
    );
    // Runs of equal format as one rect each.
    let s = 0;
    for (let t = 1; t <= n; t++) {
      if (t === n || r.cells[t] !== r.cells[s]) {
        const f = a.heatmap.formats[r.cells[s]];
        parts.push(
          `<rect class="cell" x="${left + s * cell}" y="${y}" width="${(t - s) * cell}" ` +
            `height="${rh - 1}" fill="${bitsColour(pairBits(f))}"><title>${
              escapeHtml(`layer ${r.layer} head ${r.head} positions ${s}–${t - 1}: ${f}`)
            }</title></rect>`,
        );
        s = t;
      }
    }
  });
  parts.push(
    `<text x="${left}" y="${h - 8}">position 0 … ${n - 1} (longest calibration sequence)</text>`,
  );
  const legend = a.heatmap.formats.map((f) =>
    `<span class="key"><i style="background:${bitsColour(pairBits(f))}"></i>${escapeHtml(f)} ` +
    `(${pairBits(f).toFixed(2)} b)</span>`
  ).join(" ");
  return `<svg id="heatmap" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">${
    parts.join("")
  }</svg><p class="legend">${legend}</p>`;
}

function _bars(
  id: string,
  labels: string[],
  series: { name: string; values: number[]; colour: string }[],
  opts: { log?: boolean; unit: string },
): string {
  const w = 640, h = 240, left = 70, bottom = 30, top = 20;
  const all = series.flatMap((s) => s.values).filter((v) => v > 0);
  const maxV = Math.max(...all, 1e-30), minV = Math.min(...all, maxV);
  const lo = opts.log ? Math.log10(minV) - 0.5 : 0, hi = opts.log ? Math.log10(maxV) + 0.2 : maxV;
  const y = (v: number) => {
    const x = opts.log ? Math.log10(Math.max(v, 10 ** lo)) : v;
    return top + (h - top - bottom) * (1 - (x - lo) / (hi - lo));
  };
  const group = (w - left - 10) / labels.length;
  const bw = (group * 0.8) / series.length;
  const parts: string[] = [
    `<line x1="${left}" y1="${h - bottom}" x2="${w}" y2="${h - bottom}" stroke="#333"/>`,
    `<text x="${left - 4}" y="${top + 4}" text-anchor="end">${
      opts.log ? maxV.toExponential(1) : Math.round(maxV)
    }</text>`,
    `<text x="4" y="${top - 6}">${escapeHtml(opts.unit)}</text>`,
  ];
  labels.forEach((label, i) => {
    const x0 = left + i * group + group * 0.1;
    parts.push(`<text x="${x0 + group * 0.4}" y="${h - 10}" text-anchor="middle">${label}</text>`);
    series.forEach((s, j) => {
      const yv = y(s.values[i]);
      parts.push(
        `<rect class="bar" x="${x0 + j * bw}" y="${yv}" width="${bw - 1}" height="${
          Math.max(1, h - bottom - yv)
        }" fill="${s.colour}"><title>${
          escapeHtml(`${label} ${s.name}: ${s.values[i]}`)
        }</title></rect>`,
      );
    });
  });
  const legend = series.map((s) =>
    `<span class="key"><i style="background:${s.colour}"></i>${s.name}</span>`
  )
    .join(" ");
  return `<svg id="${id}" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">${
    parts.join("")
  }</svg><p class="legend">${legend}</p>`;
}

function _frontier(a: AnalysisResult): string {
  const w = 640, h = 300, left = 70, bottom = 40, top = 20, right = 110;
  const pts = a.rows.filter((r) => r.kind !== "reference" && r.meanKl > 0);
  const xs = pts.map((r) => r.bitsPerElement);
  const ys = pts.map((r) => Math.log10(r.meanKl));
  const x0 = Math.floor(Math.min(...xs)), x1 = Math.ceil(Math.max(...xs));
  const y0 = Math.floor(Math.min(...ys)), y1 = Math.ceil(Math.max(...ys));
  const X = (v: number) => left + (w - left - right) * (v - x0) / Math.max(1e-9, x1 - x0);
  const Y = (v: number) => top + (h - top - bottom) * (1 - (v - y0) / Math.max(1e-9, y1 - y0));
  const parts = [
    `<line x1="${left}" y1="${h - bottom}" x2="${w - right}" y2="${h - bottom}" stroke="#333"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${h - bottom}" stroke="#333"/>`,
    `<text x="${(w + left) / 2}" y="${h - 6}" text-anchor="middle">bits per element held</text>`,
    `<text x="4" y="${top - 6}">mean KL vs FP32 (nats, log)</text>`,
  ];
  for (let v = x0; v <= x1; v += Math.max(1, Math.round((x1 - x0) / 8))) {
    parts.push(`<text x="${X(v)}" y="${h - bottom + 14}" text-anchor="middle">${v}</text>`);
  }
  for (let v = y0; v <= y1; v++) {
    parts.push(`<text x="${left - 4}" y="${Y(v) + 4}" text-anchor="end">1e${v}</text>`);
  }
  pts.forEach((r, i) => {
    const kv = r.kind === "kvprec";
    parts.push(
      `<circle class="point ${kv ? "kvprec" : "baseline"}" cx="${X(xs[i])}" cy="${Y(ys[i])}" r="${
        kv ? 7 : 5
      }" fill="${kv ? "#d7191c" : "#888"}"><title>${
        escapeHtml(
          `${r.name}: ${r.bitsPerElement.toFixed(3)} bits, KL ${r.meanKl.toExponential(2)}`,
        )
      }</title></circle>`,
    );
    if (kv) {
      parts.push(`<text x="${X(xs[i]) + 9}" y="${Y(ys[i]) + 4}">${escapeHtml(r.name)}</text>`);
    }
  });
  return `<svg id="frontier" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">${
    parts.join("")
  }</svg><p class="legend"><span class="key"><i style="background:#d7191c"></i>kvprec</span> ` +
    `<span class="key"><i style="background:#888"></i>uniform baselines</span></p>`;
}

/**
 * Renders the report.
 * @param a the analysis
 * @returns the HTML document
 */
export function renderReport(a: AnalysisResult): string {
  const ref = a.rows.find((r) => r.kind === "reference");
  const kv = a.rows.find((r) => r.name === a.kvprecRow)!;
  const fmt = (n: number, d = 3) => n.toFixed(d);
  const target = "epsilon" in a.config.target
    ? `ε = ${a.config.target.epsilon}`
    : `budget ${a.config.target.budget} bits/element`;
  const table = a.rows.map((r) =>
    `<tr class="${r.kind}"><td>${escapeHtml(r.name)}</td><td>${fmt(r.bitsPerElement)}</td><td>${
      fmt(16 / r.bitsPerElement, 2)
    }×</td><td>${fmt(r.perplexity, 4)}</td><td>${
      ref ? fmt(100 * (r.perplexity / ref.perplexity - 1), 2) : "—"
    }%</td><td>${r.meanKl.toExponential(2)}</td><td>${fmt(100 * r.greedyMatch, 0)}%</td></tr>`
  ).join("");
  const L = a.layers.map((l) => `L${l.layer}`);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvprec analysis report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
svg{background:#fafafa;border:1px solid #ddd;font:10px sans-serif;display:block}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}tr.kvprec{font-weight:bold;color:#b00}
.key{display:inline-block;margin-right:12px}.key i{display:inline-block;width:10px;height:10px;margin-right:4px}
.legend{font-size:12px}
</style></head><body>
<h1>kvprec analysis report</h1>
<p>Model: ${a.model.nLayers} layers, ${a.model.nHeads} query heads over ${a.model.nKvHeads} KV heads,
head size ${a.model.headDim}. Target ${
    escapeHtml(target)
  }; calibration on ${a.config.calibrationLengths.length}
sequences (lengths ${
    a.config.calibrationLengths.join(", ")
  }); evaluation on ${a.config.evalLines} lines,
context ${a.config.context}; backend ${escapeHtml(a.config.backend)}.</p>
<p><b>kvprec: ${fmt(kv.bitsPerElement)} bits per element, ${
    fmt(16 / kv.bitsPerElement, 2)
  }× vs FP16,
perplexity ${fmt(kv.perplexity, 4)}${
    ref ? ` (${fmt(100 * (kv.perplexity / ref.perplexity - 1), 2)}% vs FP32)` : ""
  }, greedy match ${fmt(100 * kv.greedyMatch, 0)}%.</b>
Predicted on the calibration data: ${fmt(a.predicted.plan.bitsPerElement)} bits per element.
Positions ranked by ${escapeHtml(String(a.plan.meta?.sensitivity ?? "curvature"))}, sinks and
window kept at ${escapeHtml(a.plan.windowFormat)}${
    a.plan.stagingFormat && a.plan.stagingFormat !== a.plan.windowFormat
      ? `, tokens awaiting eviction at ${escapeHtml(a.plan.stagingFormat)}`
      : ""
  }${
    a.sensitivities
      ? ` (mean KL on the calibration lines: ${
        a.sensitivities.map((c) =>
          `${escapeHtml(`${c.sensitivity}/${windowChoiceName(c)}`)} ${c.meanKl.toExponential(2)}`
        ).join(", ")
      })`
      : ""
  }${
    a.plan.ropeBase === undefined
      ? ""
      : `; channel-axis key pages store keys before RoPE (base ${a.plan.ropeBase})`
  }.</p>
<h2>Format per layer × position</h2>${_heatmap(a)}
<h2>Curvature per layer</h2>${
    _bars("curvature", L, [
      { name: "mean κ", values: a.layers.map((l) => l.meanCurvature), colour: _PALETTE[0] },
      { name: "max κ", values: a.layers.map((l) => l.maxCurvature), colour: _PALETTE[4] },
    ], { log: true, unit: "curvature κ (log)" })
  }
<h2>Memory per layer (first evaluation window)</h2>${
    _bars("memory", L, [
      { name: "kvprec", values: a.layers.map((l) => l.bytes), colour: _PALETTE[4] },
      { name: "FP16", values: a.layers.map((l) => l.fp16Bytes), colour: _PALETTE[0] },
      { name: "FP32", values: a.layers.map((l) => l.fp32Bytes), colour: _PALETTE[5] },
    ], { unit: "bytes" })
  }
<h2>Quality vs bits (eval rows)</h2>${_frontier(a)}
<table><tr><th>configuration</th><th>bits/elem</th><th>vs FP16</th><th>perplexity</th><th>Δppl</th><th>mean KL</th><th>greedy</th></tr>${table}</table>
</body></html>
`;
}
