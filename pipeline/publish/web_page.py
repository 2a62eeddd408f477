"""The browser view's one page: inline CSS and JS, nothing fetched from elsewhere (a bedside network may be closed).

Large type on a dark background, sized to the screen, so a tablet at the bedside reads it at arm's length. Frames
come by long polling ``frame.jpg?after=SEQ`` (the server answers with the first frame newer than SEQ, or 204 after a
second); numbers come from ``stats.json`` twice a second. Text from the network is set with ``textContent`` only.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bonestream</title>
<style>
html,body{margin:0;height:100%;background:#111;color:#eee;font:20px/1.25 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body{display:flex;flex-direction:column}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.4em 1em;padding:.35em .8em;background:#1d1d1d}
#state{font-weight:700;padding:.1em .6em;border-radius:.3em;background:#555}
#state.live{background:#17803a}#state.stale{background:#b36b00}#state.down{background:#b00020}
#random{display:none;background:#b00020;color:#fff;font-weight:800;font-size:1.3em;text-align:center;padding:.25em}
main{flex:1;min-height:0;display:flex;align-items:center;justify-content:center;background:#000}
#frame{width:100%;height:100%;object-fit:contain}
main.stale #frame{opacity:.35}
#stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(8.5em,1fr));gap:.2em .8em;padding:.35em .8em;background:#1d1d1d}
#stats div{display:flex;flex-direction:column}
#stats span{font-size:.7em;color:#aaa;text-transform:uppercase;letter-spacing:.04em}
#stats b{font-size:1.4em;font-variant-numeric:tabular-nums}
</style></head>
<body>
<header><span id="state">WAITING</span><span id="stream">connecting</span><span id="age"></span></header>
<div id="random" role="alert"></div>
<main id="view"><img id="frame" alt=""></main>
<section id="stats">
<div><span>fps</span><b id="fps">-</b></div>
<div><span>latency p50 ms</span><b id="p50">-</b></div>
<div><span>latency last ms</span><b id="last">-</b></div>
<div><span>received</span><b id="received">-</b></div>
<div><span>missed</span><b id="missed">-</b></div>
<div><span>malformed</span><b id="malformed">-</b></div>
<div><span>disconnects</span><b id="disconnects">-</b></div>
<div><span>skipped</span><b id="skipped">-</b></div>
<div><span>dropped upstream</span><b id="dropped">-</b></div>
<div><span>bone</span><b id="bone">-</b></div>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const fixed = (x, digits) => (x === null || x === undefined ? "-" : x.toFixed(digits));

async function get(url, ms) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ms);
  try { return await fetch(url, {cache: "no-store", signal: abort.signal}); } finally { clearTimeout(timer); }
}

function state(text, kind) {
  $("state").textContent = text;
  $("state").className = kind;
  $("view").classList.toggle("stale", kind !== "live");
}

function show(s) {
  if (s.frame_id === null) state("WAITING FOR STREAM", "stale");
  else if (s.stale) state("STALE", "stale");
  else state("LIVE", "live");
  $("stream").textContent = s.frame_id === null ? s.address : s.stream_id + "  frame " + s.frame_id;
  $("age").textContent = s.age_s === null ? "" : s.stale ? "no frame for " + fixed(s.age_s, 1) + " s" : fixed(s.age_s * 1000, 0) + " ms ago";
  $("random").style.display = s.warning ? "block" : "none";
  $("random").textContent = s.warning || "";
  $("fps").textContent = fixed(s.fps, 1);
  $("p50").textContent = fixed(s.latency_ms.p50, 1);
  $("last").textContent = fixed(s.latency_ms.last, 1);
  for (const name of ["received", "missed", "malformed", "disconnects", "skipped"]) $(name).textContent = s.counters[name];
  $("dropped").textContent = s.dropped_upstream === null ? "-" : s.dropped_upstream;
  $("bone").textContent = s.foreground_fraction === null ? "-" : fixed(100 * s.foreground_fraction, 0) + " %";
}

async function stats() {
  for (;;) {
    try {
      const r = await get("stats.json", 3000);
      if (!r.ok) throw new Error(r.status);
      show(await r.json());
    } catch (e) {
      state("VIEWER UNREACHABLE", "down");
    }
    await sleep(500);
  }
}

async function frames() {
  let seq = 0;
  for (;;) {
    try {
      const r = await get("frame.jpg?after=" + seq, 5000);
      if (r.status === 204) continue;  // nothing newer within the server's wait: ask again
      if (r.status === 200) {
        const img = $("frame"), old = img.src;
        img.src = URL.createObjectURL(await r.blob());
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
        seq = Number(r.headers.get("X-Frame-Seq")) || seq;
        continue;
      }
    } catch (e) {}
    await sleep(500);  // no frame yet, or the viewer is gone: try again shortly
  }
}

stats();
frames();
</script>
</body></html>
"""
