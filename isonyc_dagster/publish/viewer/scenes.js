// "3D" links of the map viewer: the regions lifted into Gaussian-splat scenes (scenes/index.json, written by the
// scene_3d asset) are outlined on the map, each with a "3D" link, and listed in the panel; a link opens the splat
// viewer (splat.html?scene=<region>). Without scenes/index.json this script does nothing.
/* global OpenSeadragon */
"use strict";

(function () {
  const NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

  async function scenes() {
    try {
      const res = await fetch("scenes/index.json", { cache: "no-cache" });
      if (!res.ok) return [];
      const index = await res.json();
      return (index.scenes || []).filter((s) => s && NAME.test(String(s.name)) && Number.isInteger(s.x0));
    } catch (err) {
      return [];
    }
  }

  function link(scene, text) {
    const a = document.createElement("a");
    a.href = `splat.html?scene=${encodeURIComponent(scene.name)}`;
    a.target = "_blank";
    a.rel = "noopener";
    a.className = "scene-3d";
    a.dataset.scene = scene.name;
    a.textContent = text;
    a.title = `${scene.name}: quadrants ${scene.x0},${scene.y0} · ${scene.w}×${scene.h}` +
      (scene.splats ? ` · ${Number(scene.splats).toLocaleString("en")} splats` : "");
    return a;
  }

  function outline(app, scene, stack) {
    const { viewer, side } = app;
    const item = viewer.world.getItemAt(0);
    if (!item) return;
    const q = side.quadrant_px;
    const box = document.createElement("div");
    box.className = "scene-region";
    box.dataset.scene = scene.name;
    box.style.cssText = "border: 2px dashed rgba(143, 193, 255, 0.9); box-sizing: border-box; pointer-events: none;";
    const a = link(scene, `3D · ${scene.name}`);
    // Regions sharing a top-left corner stack their labels instead of hiding each other.
    a.style.cssText = `position: absolute; left: 4px; top: ${4 + 22 * stack}px; padding: 1px 6px; border-radius: 3px; ` +
      "background: rgba(20, 26, 36, 0.85); color: #8fc1ff; font: 12px system-ui, sans-serif; pointer-events: auto;";
    // OpenSeadragon captures the pointer on the map, so a plain link inside an overlay never gets its click: its own
    // MouseTracker takes the click (and keeps it from panning the map) and opens the scene.
    new OpenSeadragon.MouseTracker({
      element: a,
      clickHandler: (e) => {
        if (e.originalEvent) e.originalEvent.preventDefault();
        window.open(a.href, "_blank", "noopener");
      },
    });
    box.append(a);
    const rect = item.imageToViewportRectangle((scene.x0 - side.grid.x0) * q, (scene.y0 - side.grid.y0) * q,
      scene.w * q, scene.h * q);
    viewer.addOverlay({ element: box, location: rect });
  }

  // With `isonyc serve`'s console (/api/): a form to register a new region from the selected quadrant. The POST
  // carries the console token the console panel keeps (console.js); the scene_scheduler sensor lifts it later.
  async function regionForm() {
    let info;
    try {
      const res = await fetch("api/regions", { cache: "no-store" });
      if (!res.ok) return;
      info = await res.json();
    } catch (err) {
      return;
    }
    if (!info.enabled) return;
    const form = document.createElement("form");
    form.id = "region-form";
    form.className = "row";
    form.innerHTML =
      '<span class="label">New 3D region</span>' +
      '<input name="name" placeholder="name" size="10" required pattern="[a-z0-9][a-z0-9_-]{0,63}" aria-label="Region name">' +
      '<input name="w" type="number" min="1" max="8" value="2" style="width: 3em" aria-label="Width in quadrants">×' +
      '<input name="h" type="number" min="1" max="8" value="2" style="width: 3em" aria-label="Height in quadrants">' +
      '<button type="submit">Add at selected</button><output name="msg" aria-live="polite"></output>';
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const m = /^#(-?\d+),(-?\d+)$/.exec(window.location.hash);
      const msg = form.elements.msg;
      if (!m) {
        msg.textContent = "click a quadrant first (the region's top-left)";
        return;
      }
      const body = {
        name: form.elements.name.value.trim(),
        x0: parseInt(m[1], 10),
        y0: parseInt(m[2], 10),
        w: parseInt(form.elements.w.value, 10),
        h: parseInt(form.elements.h.value, 10),
      };
      try {
        const res = await fetch("api/region", {
          method: "POST",
          headers: {
            Authorization: `Bearer ${sessionStorage.getItem("isonyc-console-token") || ""}`,
            "Content-Type": "application/json",
          },
          body: JSON.stringify(body),
        });
        const out = await res.json();
        msg.textContent = res.ok
          ? `added ${out.added.name}: its scene is built once its quadrants are generated`
          : out.error || `HTTP ${res.status}`;
        msg.dataset.error = res.ok ? "" : "1";
      } catch (err) {
        msg.textContent = String(err.message || err);
        msg.dataset.error = "1";
      }
    });
    const panel = document.getElementById("panel");
    const status = document.getElementById("status");
    panel.insertBefore(form, status && status.parentNode === panel ? status : null);
  }

  async function start(app) {
    regionForm();
    const list = await scenes();
    if (!list.length) return;
    const row = document.createElement("div");
    row.id = "scenes";
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = "3D scenes";
    const links = document.createElement("span");
    links.style.cssText = "display: flex; flex-wrap: wrap; gap: 8px;";
    for (const scene of list) {
      const a = link(scene, scene.name);
      a.style.color = "#8fc1ff";
      links.append(a);
    }
    row.append(label, links);
    const panel = document.getElementById("panel");
    const status = document.getElementById("status");
    panel.insertBefore(row, status && status.parentNode === panel ? status : null);
    const corners = {};
    const draw = () =>
      list.forEach((s) => {
        const corner = `${s.x0},${s.y0}`;
        corners[corner] = (corners[corner] || 0) + 1;
        outline(app, s, corners[corner] - 1);
      });
    if (app.viewer.world.getItemCount()) draw();
    else app.viewer.addOnceHandler("open", draw);
  }

  if (window.isonyc) start(window.isonyc);
  else window.addEventListener("isonyc:viewer", (e) => start(e.detail), { once: true });
})();
