// Bounds editor: draw or edit the project's bounds as a polygon over the map, see its quadrant and lattice-step
// counts live, save it as the project's bounds GeoJSON (POST /api/bounds, token-protected; the server converts the
// outline to lng/lat and checks it with geo/bounds.py).
//
// The counts use the same rules as the Python: a quadrant belongs to the bounds when its box, shrunk by 1/100 px,
// shares area with the outline (geo/bounds.py quadrants_for_bounds); the lattice origin is (min x, min y) and a
// quadrant's step is kind_at() of generate/plan.py (3×3 cells: 2×2 block, 1×2 and 2×1 bridges, 1×1 corner).
/* global OpenSeadragon */
"use strict";

(function () {
  const EPS = 1e-2;
  const TOKEN_KEY = "isonyc-console-token";

  // Does segment a→b meet the rectangle [x0,x1]×[y0,y1]? (Liang–Barsky clipping.)
  function segmentHitsBox(a, b, x0, y0, x1, y1) {
    let t0 = 0;
    let t1 = 1;
    const dx = b[0] - a[0];
    const dy = b[1] - a[1];
    const edges = [
      [-dx, a[0] - x0],
      [dx, x1 - a[0]],
      [-dy, a[1] - y0],
      [dy, y1 - a[1]],
    ];
    for (const [p, q] of edges) {
      if (p === 0) {
        if (q < 0) return false;
      } else {
        const t = q / p;
        if (p < 0) t0 = Math.max(t0, t);
        else t1 = Math.min(t1, t);
        if (t0 > t1) return false;
      }
    }
    return true;
  }

  function pointInRing(x, y, ring) {
    let inside = false;
    for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
      const [xi, yi] = ring[i];
      const [xj, yj] = ring[j];
      if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }

  // The quadrants (sorted by y, then x) whose box shares area with the outline (world pixels).
  function quadrantsOf(ring, q) {
    if (ring.length < 3) return [];
    const xs = ring.map((p) => p[0]);
    const ys = ring.map((p) => p[1]);
    const out = [];
    for (let y = Math.floor(Math.min(...ys) / q); y < Math.ceil(Math.max(...ys) / q); y++) {
      for (let x = Math.floor(Math.min(...xs) / q); x < Math.ceil(Math.max(...xs) / q); x++) {
        const x0 = x * q + EPS;
        const y0 = y * q + EPS;
        const x1 = (x + 1) * q - EPS;
        const y1 = (y + 1) * q - EPS;
        let hit = pointInRing((x0 + x1) / 2, (y0 + y1) / 2, ring);
        for (let i = 0; !hit && i < ring.length; i++) {
          hit = segmentHitsBox(ring[i], ring[(i + 1) % ring.length], x0, y0, x1, y1);
        }
        if (hit) out.push([x, y]);
      }
    }
    return out;
  }

  // generate/plan.py kind_at + LatticePlan.from_quadrants: one step per (kind, cell) that owns a quadrant.
  function stepsOf(keys) {
    if (!keys.length) return 0;
    const ox = Math.min(...keys.map((k) => k[0]));
    const oy = Math.min(...keys.map((k) => k[1]));
    const steps = new Set();
    for (const [x, y] of keys) {
      const bx = Math.floor((x - ox) / 3);
      const by = Math.floor((y - oy) / 3);
      const rx = x - ox - 3 * bx;
      const ry = y - oy - 3 * by;
      const kind = rx < 2 ? (ry < 2 ? "block" : "bridge_h") : ry < 2 ? "bridge_v" : "corner";
      steps.add(`${kind}:${bx},${by}`);
    }
    return steps.size;
  }

  function count(ring, q) {
    const keys = quadrantsOf(ring, q);
    return { quadrants: keys.length, steps: stepsOf(keys), keys };
  }

  const ed = { editing: false, ring: [], drag: -1, count, quadrantsOf, stepsOf };
  window.isonycBounds = ed;

  function start(iso) {
    const { viewer, side } = iso;
    const q = side.quadrant_px;
    const { x0, y0 } = side.grid;
    const canvas = document.createElement("canvas");
    canvas.id = "bounds-canvas";
    viewer.canvas.parentElement.append(canvas);
    const bar = document.createElement("div");
    bar.id = "bounds-bar";
    bar.innerHTML =
      '<button id="bounds-edit">Edit bounds</button><span id="bounds-tools" hidden>' +
      '<button id="bounds-undo">Undo vertex</button><button id="bounds-clear">Clear</button>' +
      '<button id="bounds-save">Save bounds</button></span>' +
      '<output id="bounds-count"></output><span id="bounds-error" role="status"></span>';
    document.body.append(bar);
    const $ = (id) => document.getElementById(id);

    const toScreen = (p) => {
      const item = viewer.world.getItemAt(0);
      return item.imageToViewerElementCoordinates(new OpenSeadragon.Point(p[0] - x0 * q, p[1] - y0 * q));
    };
    const toWorld = (pos) => {
      const img = viewer.world.getItemAt(0).viewerElementToImageCoordinates(pos);
      return [img.x + x0 * q, img.y + y0 * q];
    };

    function draw() {
      const w = viewer.canvas.clientWidth;
      const h = viewer.canvas.clientHeight;
      if (canvas.width !== w || canvas.height !== h) {
        canvas.width = w;
        canvas.height = h;
      }
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, w, h);
      if (!ed.ring.length || !viewer.world.getItemAt(0)) return;
      const pts = ed.ring.map(toScreen);
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
      ctx.closePath();
      ctx.fillStyle = "rgba(143, 193, 255, 0.15)";
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#8fc1ff";
      ctx.stroke();
      if (ed.editing) {
        ctx.fillStyle = "#fff";
        for (const p of pts) ctx.fillRect(p.x - 4, p.y - 4, 8, 8);
      }
      const c = count(ed.ring, q);
      $("bounds-count").textContent = `${c.quadrants} quadrants · ${c.steps} steps`;
      $("bounds-count").dataset.quadrants = c.quadrants;
      $("bounds-count").dataset.steps = c.steps;
    }
    ed.draw = draw;

    async function load() {
      const res = await fetch("api/bounds", { cache: "no-store" });
      if (!res.ok) return;
      const b = await res.json();
      // Edit the largest ring (a MultiPolygon's other parts are kept out of the editor).
      ed.ring = b.rings.reduce((a, r) => (r.length > a.length ? r : a), []);
      draw();
    }

    $("bounds-edit").addEventListener("click", async () => {
      ed.editing = !ed.editing;
      $("bounds-tools").hidden = !ed.editing;
      $("bounds-edit").textContent = ed.editing ? "Done" : "Edit bounds";
      if (ed.editing && !ed.ring.length) await load();
      draw();
    });
    $("bounds-undo").addEventListener("click", () => {
      ed.ring.pop();
      draw();
    });
    $("bounds-clear").addEventListener("click", () => {
      ed.ring = [];
      draw();
    });
    $("bounds-save").addEventListener("click", async () => {
      $("bounds-error").textContent = "";
      const res = await fetch("api/bounds", {
        method: "POST",
        headers: {
          Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify({ polygon_px: ed.ring }),
      });
      const body = await res.json();
      $("bounds-error").textContent = res.ok
        ? `saved: ${body.quadrants} quadrants · ${body.steps} steps → ${body.path}`
        : body.error;
      $("bounds-error").dataset.ok = res.ok ? "1" : "";
    });

    viewer.addHandler("canvas-click", (e) => {
      if (!ed.editing || !e.quick || ed.drag >= 0) return;
      ed.ring.push(toWorld(e.position));
      draw();
    });
    viewer.addHandler("canvas-press", (e) => {
      if (!ed.editing) return;
      ed.drag = ed.ring.findIndex((p) => toScreen(p).distanceTo(e.position) < 10);
    });
    viewer.addHandler("canvas-drag", (e) => {
      if (!ed.editing || ed.drag < 0) return;
      e.preventDefaultAction = true; // move the vertex, not the map
      ed.ring[ed.drag] = toWorld(e.position);
      draw();
    });
    viewer.addHandler("canvas-release", () => {
      setTimeout(() => (ed.drag = -1), 0);
    });
    for (const ev of ["animation", "update-viewport", "resize", "open"]) viewer.addHandler(ev, draw);
  }

  async function maybeStart(iso) {
    const res = await fetch("api/info", { cache: "no-store" }).catch(() => null);
    if (res && res.ok) start(iso);
  }

  if (window.isonyc) maybeStart(window.isonyc);
  else window.addEventListener("isonyc:viewer", (e) => maybeStart(e.detail), { once: true });
})();
