"""The review page, rendered on the server: the queue list and one item at a time, with a little JavaScript for the
keyboard (a accept, c correct: focus the taxonomy search, Enter picks; o out of scope; s skip; j/k next/previous).

Everything that comes from a feed or a reviewer (titles, descriptions, native paths, names) is hostile input: it is
HTML-escaped where it enters the markup, and the state the script reads travels as JSON inside a
`<script type="application/json">` block with `<`, `>` and `&` escaped, so no title can close the block or run
code. The script only ever sets `textContent`.
"""
from __future__ import annotations

import json
from html import escape
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2433}
header{background:#1d2433;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#9cc3ff} main{padding:20px 24px} .muted{color:#6b7385}
.item{display:grid;grid-template-columns:360px 1fr 380px;gap:24px;align-items:start}
.card{background:#fff;border-radius:8px;padding:16px;box-shadow:0 1px 3px #0002}
.img{width:100%;max-height:420px;object-fit:contain;background:#eee;border-radius:6px}
.noimg{height:240px;display:flex;align-items:center;justify-content:center;background:#eee;border-radius:6px}
.path span{display:inline-block;background:#e8f0fe;border-radius:4px;padding:3px 8px;margin:2px}
.path small{color:#3b5bdb;margin-left:4px} .flag{background:#ffe8cc;border-radius:4px;padding:2px 6px;margin-right:6px}
kbd{background:#eee;border:1px solid #bbb;border-radius:3px;padding:0 4px;font-size:90%}
button{margin:4px 4px 4px 0;padding:6px 10px;border-radius:6px;border:1px solid #99a;background:#fff;cursor:pointer}
#search{width:100%;padding:8px;font-size:15px;box-sizing:border-box} #nodes{list-style:none;padding:0;margin:6px 0;
max-height:360px;overflow:auto} #nodes li{padding:4px 6px;cursor:pointer;border-radius:4px}
#nodes li.hl{background:#3b5bdb;color:#fff} #msg{color:#c92a2a;min-height:1.2em}
table{border-collapse:collapse} td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
progress{width:160px}
"""

SCRIPT = r"""
const S = JSON.parse(document.getElementById('state').textContent);
const $ = (id) => document.getElementById(id);
const msg = (t) => { $('msg').textContent = t; };
let hl = 0, shown = [];
function reviewer() { return $('reviewer').value.trim(); }
function keepName() {
  document.cookie = 'prodcat_reviewer=' + encodeURIComponent(reviewer()) + '; path=/review; SameSite=Strict';
}
$('reviewer').addEventListener('change', keepName);
function go(i) { location.href = '/review/' + S.queue + '?i=' + ((i + S.total) % S.total); }
async function decide(decision, path) {
  const name = reviewer();
  if (!name) { msg('Enter your name first (it is recorded with every decision).'); $('reviewer').focus(); return; }
  keepName();
  const r = await fetch('/review/' + S.queue + '/decision', {method: 'POST',
    headers: {'content-type': 'application/json'},
    body: JSON.stringify({item_id: S.item_id, decision: decision, path: path || '', reviewer: name, index: S.index})});
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) { msg(doc.detail || doc.error || ('error ' + r.status)); return; }
  go(doc.next);
}
function render() {
  const q = $('search').value.trim().toLowerCase();
  shown = S.nodes.filter((n) => n.toLowerCase().includes(q)).slice(0, 40);
  hl = Math.min(hl, Math.max(shown.length - 1, 0));
  const ul = $('nodes'); ul.replaceChildren();
  shown.forEach((n, i) => {
    const li = document.createElement('li'); li.textContent = n; if (i === hl) li.className = 'hl';
    li.onclick = () => decide('correct', n); ul.appendChild(li); });
}
$('search').addEventListener('input', () => { hl = 0; render(); });
$('search').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && shown.length) { e.preventDefault(); decide('correct', shown[hl]); }
  else if (e.key === 'ArrowDown') { e.preventDefault(); hl = Math.min(hl + 1, shown.length - 1); render(); }
  else if (e.key === 'ArrowUp') { e.preventDefault(); hl = Math.max(hl - 1, 0); render(); }
  else if (e.key === 'Escape') { $('search').blur(); }
});
document.addEventListener('keydown', (e) => {
  if (e.target.tagName === 'INPUT' || e.ctrlKey || e.metaKey || e.altKey) return;
  const act = {a: () => decide('accept', S.predicted), o: () => decide('out_of_scope', ''), s: () => decide('skip', ''),
    j: () => go(S.index + 1), k: () => go(S.index - 1), c: () => { $('search').focus(); $('search').select(); }}[e.key];
  if (act) { e.preventDefault(); act(); }
});
document.querySelectorAll('[data-act]').forEach((b) => b.addEventListener('click', () => {
  const a = b.dataset.act; if (a === 'accept') decide('accept', S.predicted); else if (a === 'c') $('search').focus();
  else if (a === 'j') go(S.index + 1); else if (a === 'k') go(S.index - 1); else decide(a, ''); }));
render();
"""


def script_json(doc) -> str:
    """JSON safe inside a <script> block: no '<', '>' or '&' that could end it or open a comment."""
    return (json.dumps(doc, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _shell(title: str, body: str, shop: str = "") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><header><b>prodcat review</b><a href="/review">queues</a>'
            f'<span class="muted">{escape(shop)}</span></header><main>{body}</main></body></html>')


def queue_list_html(source, progress: dict) -> str:
    """The queues with their progress (decided / total)."""
    rows = []
    for name, queue in source.queues.items():
        p = progress[name]
        rows.append(f'<tr><td><a href="/review/{quote(name)}">{escape(queue.label)}</a></td>'
                    f'<td><progress max="{max(p["total"], 1)}" value="{p["decided"]}"></progress></td>'
                    f'<td>{p["decided"]} / {p["total"]} decided</td></tr>')
    body = (f'<h1>Review queues: {escape(source.shop)}</h1><p class="muted">from {escape(str(source.folder))}; '
            f'model {escape(source.model_version or "?")}</p><table><tr><th>queue</th><th>progress</th><th></th></tr>'
            + "".join(rows) + "</table>")
    return _shell("prodcat review", body, source.shop)


def _path_html(item) -> str:
    if not item.confidences:
        return f'<span>{escape(item.predicted_path or "(no path proposed)")}</span>'
    return "".join(f'<span>{escape(name)}<small>{"" if c is None else f"{c:.2f}"}</small></span>'
                   for name, c in item.confidences)


def _history_html(history) -> str:
    if not len(history):
        return '<p class="muted">No decision yet.</p>'
    rows = "".join(f'<tr><td>{escape(str(r["decided_at"])[:19])}</td><td>{escape(r["reviewer"])}</td>'
                   f'<td>{escape(r["decision"])}</td><td>{escape(r["path"])}</td></tr>'
                   for r in history.to_dict("records"))
    return f"<table><tr><th>when (UTC)</th><th>who</th><th>decision</th><th>path</th></tr>{rows}</table>"


def _item_card(queue, item) -> str:
    image = (f'<img class="img" alt="product image" src="/review/{quote(queue.name)}/image/{quote(item.image_name)}">'
             if item.image is not None else '<div class="noimg muted">no image</div>')
    flags = "".join(f'<span class="flag">{escape(k)}: {escape(str(v))}</span>' for k, v in item.flags.items()
                    if v not in ("", False, None))
    alts = "".join(f"<li>{escape(p)}{'' if s is None else f' ({s:.2f})'}</li>" for p, s in item.alternatives)
    return (f'<div class="card">{image}</div><div class="card"><h2 id="title">{escape(item.title)}</h2>'
            f'<p id="description">{escape(item.description)}</p><p>{flags}</p>'
            f'<h3>Predicted path</h3><div class="path" id="predicted">{_path_html(item)}</div>'
            + (f"<h3>Alternatives</h3><ul>{alts}</ul>" if alts else "")
            + '<h3>Decisions so far</h3>')


def item_html(source, queue, index: int, progress: dict, history, reviewer: str, nodes: list) -> str:
    """One item of `queue` with its predicted path, the decision buttons, the taxonomy search and its history."""
    if not queue.items:
        return _shell(queue.label, f'<h1>{escape(queue.label)}</h1><p>This queue is empty.</p>', source.shop)
    item = queue.items[index]
    state = {"queue": queue.name, "index": index, "total": len(queue.items), "item_id": item.item_id,
             "predicted": item.predicted_path, "nodes": nodes}
    buttons = "".join(f'<button data-act="{a}"><kbd>{k}</kbd> {label}</button>' for a, k, label in (
        ("accept", "a", "accept"), ("c", "c", "correct"), ("out_of_scope", "o", "out of scope"),
        ("skip", "s", "skip"), ("k", "k", "previous"), ("j", "j", "next")))
    body = (f'<h1>{escape(queue.label)}</h1><p class="muted">item {index + 1} of {len(queue.items)} - '
            f'<span id="progress">{progress["decided"]} / {progress["total"]} decided</span> - shop '
            f'{escape(item.shop)}</p><div class="item">{_item_card(queue, item)}{_history_html(history)}</div>'
            f'<div class="card"><label>Reviewer <input id="reviewer" value="{escape(reviewer)}" '
            f'placeholder="your name"></label><p>{buttons}</p><p id="msg"></p>'
            '<input id="search" placeholder="c: search the taxonomy, Enter picks" autocomplete="off">'
            '<ul id="nodes"></ul></div></div>'
            f'<script type="application/json" id="state">{script_json(state)}</script><script>{SCRIPT}</script>')
    return _shell(f"{queue.label} - prodcat review", body, source.shop)


def login_html(message: str = "") -> str:
    body = ('<h1>Review: sign in</h1><form method="post" action="/review/login"><label>Service token '
            '<input type="password" name="token" autocomplete="off"></label> <button>sign in</button></form>'
            f'<p id="msg">{escape(message)}</p>')
    return _shell("prodcat review", body)
