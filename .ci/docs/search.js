// Offline search of the tsfm-wb docs over window.TSFM_DOCS_INDEX (written by `make docs` into search_index.js).
// Rows: u = page url (+ #anchor), t = page title, g = group, k = page | section | api, h = heading or name, x = text.
(function () {
  "use strict";
  var rows = window.TSFM_DOCS_INDEX || [];
  var box = document.getElementById("search-box");
  var list = document.getElementById("search-results");
  if (!box || !list) return;
  var root = document.body.getAttribute("data-root") || "";
  var MAX = 25;
  var prepared = rows.map(function (r) {
    return {r: r, t: r.t.toLowerCase(), h: (r.h || "").toLowerCase(), x: (r.x || "").toLowerCase()};
  });

  function score(p, terms, whole) {
    var s = 0;
    for (var i = 0; i < terms.length; i++) {
      var q = terms[i], hit = 0;
      if (p.r.k === "api" && p.h === q) hit += 100;
      else if (p.r.k === "api" && p.h.indexOf(q) === 0) hit += 40;
      else if (p.h.indexOf(q) >= 0) hit += 20;
      if (p.t.indexOf(q) >= 0) hit += p.r.k === "page" ? 30 : 6;
      if (p.x.indexOf(q) >= 0) hit += 4;
      if (!hit) return 0;                   // every term must match somewhere
      s += hit;
    }
    if (p.r.k === "api" && p.h === whole) s += 200;
    return s;
  }

  function snippet(text, q) {
    if (!text) return "";
    var i = text.toLowerCase().indexOf(q);
    var start = Math.max(0, i - 40);
    return (start > 0 ? "\u2026" : "") + text.slice(start, start + 140) + (text.length > start + 140 ? "\u2026" : "");
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  }

  function render(q) {
    list.innerHTML = "";
    var whole = q.trim().toLowerCase();
    if (whole.length < 2) { list.hidden = true; return; }
    var terms = whole.split(/\s+/);
    var hits = [];
    for (var i = 0; i < prepared.length; i++) {
      var s = score(prepared[i], terms, whole);
      if (s) hits.push([s, i]);
    }
    hits.sort(function (a, b) { return b[0] - a[0] || a[1] - b[1]; });
    if (!hits.length) { list.appendChild(el("li", "none", "No matches.")); list.hidden = false; return; }
    hits.slice(0, MAX).forEach(function (h) {
      var r = prepared[h[1]].r;
      var li = el("li", "kind-" + r.k), a = el("a");
      a.href = root + r.u;
      a.appendChild(el("span", "hit-title", r.k === "page" ? r.t : (r.h || r.t)));
      if (r.k !== "page") a.appendChild(el("span", "hit-where", r.t));
      var snip = snippet(r.x, terms[0]);
      if (snip) a.appendChild(el("span", "hit-text", snip));
      li.appendChild(a);
      list.appendChild(li);
    });
    if (hits.length > MAX) list.appendChild(el("li", "none", (hits.length - MAX) + " more; refine the search."));
    list.hidden = false;
  }

  var timer = null;
  box.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { render(box.value); }, 80);
  });
  box.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") {
      var first = list.querySelector("a");
      if (first) window.location.href = first.href;
    } else if (ev.key === "Escape") {
      box.value = ""; render("");
    }
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "/" && document.activeElement !== box) { ev.preventDefault(); box.focus(); }
  });
  var cur = document.querySelector(".sidebar a.current");
  if (cur && cur.scrollIntoView) cur.scrollIntoView({block: "center"});
})();
