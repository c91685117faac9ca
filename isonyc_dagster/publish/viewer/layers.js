// Layer switcher and swipe compare for the map viewer.
// Layers are the pyramids published next to the base map as <map>_<layer>.dzi (night, snow, dark, render, water,
// photoreal); those whose sidecar <map>_<layer>.json exists are offered. The URL carries the choice:
// ?layer=night shows night, ?layer=night&compare=snow splits the map at a draggable divider (left: layer, right:
// compare), &split=0.3 places the divider. The quadrant deep link (#x,y) is kept as it is.
/* global OpenSeadragon */
"use strict";

(function () {
  const CANDIDATES = ["night", "snow", "dark", "render", "water", "photoreal"];
  const LABELS = {
    base: "Base",
    night: "Night",
    snow: "Snow",
    dark: "Dark",
    render: "Whitebox",
    water: "Water mask",
    photoreal: "Photoreal",
  };
  const $ = (id) => document.getElementById(id);
  const label = (name) => LABELS[name] || name.replace(/^restyle_(.*)$/, "$1 (restyled)");

  // The layers published beside the map: the index written with their pyramids (<map>_layers.json, which also
  // names restyled layers), else the known names whose sidecar exists (maps published before the index).
  async function available(mapName) {
    try {
      const res = await fetch(`${encodeURIComponent(`${mapName}_layers`)}.json`, { cache: "no-cache" });
      if (res.ok) {
        const index = await res.json();
        if (Array.isArray(index.layers)) return ["base", ...index.layers.filter((n) => typeof n === "string")];
      }
    } catch (err) {
      // no index: probe below
    }
    const found = await Promise.all(
      CANDIDATES.map(async (name) => {
        try {
          const res = await fetch(`${encodeURIComponent(`${mapName}_${name}`)}.json`, { cache: "no-cache" });
          return res.ok ? name : null;
        } catch (err) {
          return null;
        }
      })
    );
    return ["base", ...found.filter(Boolean)];
  }

  function setup(api) {
    const { viewer, side } = api;
    const params = new URLSearchParams(window.location.search);
    const mapName = side.name;
    const items = {}; // layer name → TiledImage (the base is world item 0)
    const state = { layer: "base", compare: null, split: 0.5, layers: ["base"] };

    function baseItem() {
      return viewer.world.getItemAt(0);
    }

    // The TiledImage of a layer, added once over the base with the same bounds; resolves when it is open.
    function itemOf(name) {
      if (name === "base") return Promise.resolve(baseItem());
      if (items[name]) return items[name];
      const bounds = baseItem().getBounds();
      items[name] = new Promise((resolve, reject) => {
        viewer.addTiledImage({
          tileSource: `${mapName}_${name}.dzi`,
          x: bounds.x,
          y: bounds.y,
          width: bounds.width,
          opacity: 0,
          success: (e) => resolve(e.item),
          error: (e) => reject(new Error(`cannot open ${mapName}_${name}.dzi: ${e.message}`)),
        });
      });
      return items[name];
    }

    // setClip asks for a redraw and every redraw fires update-viewport: only set a clip that changed.
    function clip(item, rect) {
      const old = item.getClip();
      const same = rect && old ? rect.equals(old) : rect === old;
      if (!same) item.setClip(rect);
    }

    // The image x of the divider in ``item``'s coordinates, clamped to the image.
    function dividerX(item) {
      const w = viewer.container.clientWidth;
      const img = item.viewerElementToImageCoordinates(new OpenSeadragon.Point(w * state.split, 0));
      return Math.max(0, Math.min(item.getContentSize().x, img.x));
    }

    // Keep the divider where it is on screen as the view moves: the compared layer shows right of it; when the
    // base is compared (it stays the bottom item, quadrant lookups use item 0) the layer shows left of it.
    function reclip() {
      if (!state.compare || !state.items) return;
      const { main, cmp } = state.items;
      const size = main.getContentSize();
      if (cmp === baseItem()) clip(main, new OpenSeadragon.Rect(0, 0, dividerX(main), size.y));
      else {
        const left = dividerX(cmp);
        clip(cmp, new OpenSeadragon.Rect(left, 0, size.x - left, size.y));
      }
    }

    function writeUrl() {
      const p = new URLSearchParams(window.location.search);
      if (state.layer === "base") p.delete("layer");
      else p.set("layer", state.layer);
      if (state.compare) {
        p.set("compare", state.compare);
        p.set("split", state.split.toFixed(3));
      } else {
        p.delete("compare");
        p.delete("split");
      }
      const q = p.toString();
      history.replaceState(null, "", `${window.location.pathname}${q ? `?${q}` : ""}${window.location.hash}`);
    }

    function render() {
      for (const btn of document.querySelectorAll("#layers button[data-layer]")) {
        btn.setAttribute("aria-pressed", String(btn.dataset.layer === state.layer));
      }
      $("compare-layer").value = state.compare || "";
      $("split").hidden = !state.compare;
      $("divider").hidden = !state.compare;
      $("divider").style.left = `${state.split * 100}%`;
      $("split").value = String(Math.round(state.split * 100));
      document.body.dataset.layer = state.layer;
      document.body.dataset.compare = state.compare || "";
    }

    // Show ``layer`` (left of the divider, or everywhere) and ``compare`` (right of it), hide the rest.
    async function apply() {
      render();
      writeUrl();
      document.body.dataset.layersState = "loading";
      const main = await itemOf(state.layer);
      const cmp = state.compare ? await itemOf(state.compare) : null;
      const all = await Promise.all(Object.keys(items).map((n) => items[n]));
      for (const it of all) {
        if (it !== main && it !== cmp) {
          it.setOpacity(0);
          clip(it, null);
        }
      }
      clip(main, null);
      main.setOpacity(1);
      if (main !== baseItem()) viewer.world.setItemIndex(main, viewer.world.getItemCount() - 1);
      if (cmp && cmp !== baseItem()) {
        cmp.setOpacity(1);
        viewer.world.setItemIndex(cmp, viewer.world.getItemCount() - 1);
      }
      state.items = { main, cmp };
      reclip();
      const settled = () => {
        document.body.dataset.layersState = "ready";
      };
      const pending = [main, cmp].filter((it) => it && !it.getFullyLoaded());
      if (!pending.length) settled();
      else {
        let left = pending.length;
        for (const it of pending) {
          it.addOnceHandler("fully-loaded-change", () => {
            left -= 1;
            if (!left) settled();
          });
        }
      }
      viewer.forceRedraw();
    }

    function buildPanel(names) {
      const box = $("layers");
      box.hidden = names.length < 2; // a map without other layers keeps its panel as it was
      const buttons = $("layer-buttons");
      buttons.textContent = "";
      const select = $("compare-layer");
      select.textContent = "";
      const none = document.createElement("option");
      none.value = "";
      none.textContent = "compare: off";
      select.appendChild(none);
      for (const name of names) {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.layer = name;
        b.textContent = label(name);
        b.addEventListener("click", () => {
          state.layer = name;
          if (state.compare === name) state.compare = null;
          apply();
        });
        buttons.appendChild(b);
        const o = document.createElement("option");
        o.value = name;
        o.textContent = `compare: ${label(name)}`;
        select.appendChild(o);
      }
      select.addEventListener("change", () => {
        state.compare = select.value && select.value !== state.layer ? select.value : null;
        apply();
      });
      $("split").addEventListener("input", (e) => {
        state.split = Math.max(0, Math.min(1, Number(e.target.value) / 100));
        $("divider").style.left = `${state.split * 100}%`;
        reclip();
        writeUrl();
        viewer.forceRedraw();
      });
    }

    available(mapName).then((names) => {
      state.layers = names;
      buildPanel(names);
      const want = params.get("layer");
      const cmp = params.get("compare");
      const split = parseFloat(params.get("split"));
      const unknown = [want, cmp].filter((n) => n && !names.includes(n));
      if (unknown.length) $("layer-note").textContent = `No layer ${unknown.join(", ")} in this map; showing what exists.`;
      state.layer = want && names.includes(want) ? want : "base";
      state.compare = cmp && names.includes(cmp) && cmp !== state.layer ? cmp : null;
      if (split >= 0 && split <= 1) state.split = split;
      viewer.addHandler("update-viewport", reclip);
      apply().catch((err) => {
        $("layer-note").textContent = err.message;
        document.body.dataset.layersState = "error";
      });
    });

    api.layers = {
      state,
      available: () => state.layers.slice(),
      show: (name, compare = null, split = null) => {
        state.layer = name;
        state.compare = compare && compare !== name ? compare : null;
        if (split !== null) state.split = split;
        return apply();
      },
    };
  }

  window.addEventListener("isonyc:viewer", (e) => {
    const api = e.detail;
    if (api.viewer.world.getItemCount()) setup(api);
    else api.viewer.addOnceHandler("open", () => setup(api));
  });
})();
