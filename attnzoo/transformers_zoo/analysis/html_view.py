"""A bertviz-like head view and model view in one self-contained HTML file.

The file holds its data as JSON in a ``<script type="application/json">`` element and
draws with inline JavaScript on ``<canvas>`` elements: no network, no external script or
style sheet, so it opens offline and can be mailed or archived as is.

* Head view: the query tokens on the left, the key tokens on the right, one line per
  (query, key, head) whose opacity is the weight; pick the attention family (encoder,
  decoder, cross), the layer and the heads; hovering a token keeps only its lines.
* Model view: every layer x head as a small heatmap; clicking one shows it in the head
  view.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .capture import AttentionCapture

_SCRIPT_ID = "attnzoo-attention-data"

_STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; } h2 { font-size: 15px; margin-top: 24px; }
.controls { margin: 8px 0; } .controls label { margin-right: 10px; }
.head-box { display: inline-block; width: 14px; height: 14px; margin-right: 3px;
  vertical-align: middle; border: 2px solid #fff; cursor: pointer; }
.head-box.off { opacity: 0.2; }
#model-grid { display: grid; gap: 4px; }
#model-grid canvas { border: 1px solid #ccc; cursor: pointer; }
.axis { font-size: 11px; color: #666; }
"""

_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("attnzoo-attention-data").textContent);
  const colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31",
    "#843c39", "#7b4173", "#3182bd"];
  const state = { view: 0, layer: 0, heads: null, hover: null, side: null };
  const viewSelect = document.getElementById("view-select");
  const layerSelect = document.getElementById("layer-select");
  const headBoxes = document.getElementById("head-boxes");
  const canvas = document.getElementById("head-canvas");
  const grid = document.getElementById("model-grid");
  data.views.forEach(function (v, i) {
    const option = document.createElement("option");
    option.value = i; option.textContent = v.name; viewSelect.appendChild(option);
  });
  function current() { return data.views[state.view]; }
  function colour(h) { return colours[h % colours.length]; }
  function resetControls() {
    const v = current();
    layerSelect.innerHTML = "";
    v.weights.forEach(function (_, l) {
      const option = document.createElement("option");
      option.value = l; option.textContent = "layer " + l; layerSelect.appendChild(option);
    });
    if (state.layer >= v.weights.length) { state.layer = 0; }
    layerSelect.value = state.layer;
    const nHeads = v.weights[0].length;
    state.heads = new Array(nHeads).fill(true);
    headBoxes.innerHTML = "";
    for (let h = 0; h < nHeads; h++) {
      const box = document.createElement("span");
      box.className = "head-box"; box.title = "head " + h;
      box.style.background = colour(h);
      box.onclick = function () {
        state.heads[h] = !state.heads[h]; box.classList.toggle("off", !state.heads[h]);
        drawHeadView();
      };
      box.ondblclick = function () {
        state.heads = state.heads.map(function (_, i) { return i === h; });
        Array.from(headBoxes.children).forEach(function (b, i) {
          b.classList.toggle("off", i !== h);
        });
        drawHeadView();
      };
      headBoxes.appendChild(box);
    }
  }
  const rowHeight = 20, textWidth = 110, gap = 220;
  function drawHeadView() {
    const v = current();
    const ctx = canvas.getContext("2d");
    const rows = Math.max(v.query_tokens.length, v.key_tokens.length);
    canvas.width = 2 * textWidth + gap; canvas.height = rows * rowHeight + 10;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "13px sans-serif"; ctx.textBaseline = "middle";
    const weights = v.weights[state.layer];
    const xLeft = textWidth, xRight = textWidth + gap;
    weights.forEach(function (matrix, h) {
      if (!state.heads[h]) { return; }
      ctx.strokeStyle = colour(h); ctx.lineWidth = 2;
      matrix.forEach(function (row, q) {
        if (state.side === "query" && state.hover !== q) { return; }
        row.forEach(function (w, k) {
          if (state.side === "key" && state.hover !== k) { return; }
          if (w <= 0.005) { return; }
          ctx.globalAlpha = Math.min(1, w);
          ctx.beginPath();
          ctx.moveTo(xLeft, q * rowHeight + 15); ctx.lineTo(xRight, k * rowHeight + 15);
          ctx.stroke();
        });
      });
    });
    ctx.globalAlpha = 1; ctx.fillStyle = "#222";
    ctx.textAlign = "right";
    v.query_tokens.forEach(function (t, i) { ctx.fillText(t, xLeft - 6, i * rowHeight + 15); });
    ctx.textAlign = "left";
    v.key_tokens.forEach(function (t, i) { ctx.fillText(t, xRight + 6, i * rowHeight + 15); });
  }
  canvas.onmousemove = function (event) {
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left, y = event.clientY - box.top;
    const index = Math.floor((y - 5) / rowHeight);
    const side = x < textWidth ? "query" : (x > textWidth + gap ? "key" : null);
    if (side !== state.side || index !== state.hover) {
      state.side = side; state.hover = side ? index : null; drawHeadView();
    }
  };
  canvas.onmouseleave = function () { state.side = null; state.hover = null; drawHeadView(); };
  function drawModelView() {
    const v = current();
    const nHeads = v.weights[0].length, cell = 4;
    const size = Math.max(24, Math.min(110, cell * Math.max(v.query_tokens.length,
      v.key_tokens.length)));
    grid.innerHTML = "";
    grid.style.gridTemplateColumns = "repeat(" + nHeads + ", " + (size + 2) + "px)";
    v.weights.forEach(function (layer, l) {
      layer.forEach(function (matrix, h) {
        const c = document.createElement("canvas");
        c.width = size; c.height = size; c.title = "layer " + l + ", head " + h;
        const ctx = c.getContext("2d");
        const ch = size / matrix.length, cw = size / matrix[0].length;
        matrix.forEach(function (row, q) {
          row.forEach(function (w, k) {
            ctx.fillStyle = colour(h); ctx.globalAlpha = Math.min(1, w);
            ctx.fillRect(k * cw, q * ch, Math.ceil(cw), Math.ceil(ch));
          });
        });
        c.onclick = function () {
          state.layer = l; layerSelect.value = l;
          state.heads = state.heads.map(function (_, i) { return i === h; });
          Array.from(headBoxes.children).forEach(function (b, i) {
            b.classList.toggle("off", i !== h);
          });
          drawHeadView(); canvas.scrollIntoView();
        };
        grid.appendChild(c);
      });
    });
  }
  viewSelect.onchange = function () {
    state.view = Number(viewSelect.value); resetControls(); drawHeadView(); drawModelView();
  };
  layerSelect.onchange = function () { state.layer = Number(layerSelect.value); drawHeadView(); };
  resetControls(); drawHeadView(); drawModelView();
})();
"""


def attention_json(capture: AttentionCapture, decimals: int | None = None) -> dict[str, Any]:
    """The data the HTML page embeds: ``{"views": [{"name", "query_tokens", "key_tokens",
    "weights"}]}`` with ``weights`` nested lists ``[layer][head][query][key]``.

    Args:
        capture: from :func:`~attnzoo.transformers_zoo.analysis.capture_attention`.
        decimals: round the weights (smaller files); None keeps them exact (float32).
    """
    if not isinstance(capture, AttentionCapture):
        raise TypeError(f"`capture` must be an AttentionCapture, got {type(capture).__name__}")
    views = []
    for view in capture.views():
        weights = view.weights.float().tolist()
        if decimals is not None:
            weights = _round(weights, decimals)
        views.append(
            {
                "name": view.name,
                "query_tokens": list(view.query_tokens),
                "key_tokens": list(view.key_tokens),
                "weights": weights,
            }
        )
    return {"views": views}


def _round(values: Any, decimals: int) -> Any:
    if isinstance(values, list):
        return [_round(v, decimals) for v in values]
    return round(float(values), decimals)


def render_html(
    capture: AttentionCapture, title: str = "Attention", decimals: int | None = None
) -> str:
    """The self-contained HTML page (head view and model view) of ``capture``."""
    # "<" escaped inside the JSON so no token string can close the script element.
    payload = json.dumps(attention_json(capture, decimals)).replace("<", "\\u003c")
    heading = html.escape(title)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{heading}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{heading}</h1>
<h2>Head view</h2>
<div class="controls">
  <label>attention <select id="view-select"></select></label>
  <label><select id="layer-select"></select></label>
  <span class="axis">heads (click: toggle, double-click: only this one):</span>
  <span id="head-boxes"></span>
</div>
<div class="axis">left: query (from) tokens, right: key (to) tokens; hover a token</div>
<canvas id="head-canvas"></canvas>
<h2>Model view</h2>
<div class="axis">rows: layers, columns: heads; each cell: query (down) x key (across)</div>
<div id="model-grid"></div>
<script type="application/json" id="{_SCRIPT_ID}">{payload}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def read_html_data(text: str) -> dict[str, Any]:
    """The JSON data embedded in a page written by :func:`render_html`."""
    start_tag = f'<script type="application/json" id="{_SCRIPT_ID}">'
    start = text.find(start_tag)
    if start < 0:
        raise ValueError("the page holds no attnzoo attention data")
    start += len(start_tag)
    end = text.index("</script>", start)
    data: dict[str, Any] = json.loads(text[start:end])
    return data


def write_html_view(
    captures: AttentionCapture | Sequence[AttentionCapture],
    path: str | os.PathLike[str],
    title: str = "Attention",
    decimals: int | None = None,
) -> Path:
    """Write the head view and model view of one capture (or the first of a list) to
    ``path``; returns the path."""
    capture = captures if isinstance(captures, AttentionCapture) else captures[0]
    path = Path(path)
    path.write_text(render_html(capture, title, decimals), encoding="utf-8")
    return path


__all__ = ["attention_json", "read_html_data", "render_html", "write_html_view"]
