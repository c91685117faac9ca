// Map viewer: OpenSeadragon over the DZI pyramid written by isonyc_dagster.pyramid.
// Reads <map>.json (the sidecar) for the quadrant grid, attribution and Dagster lineage links.
/* global OpenSeadragon */
"use strict";

(function () {
  const body = document.body;
  const params = new URLSearchParams(window.location.search);
  const mapName = params.get("map") || body.dataset.map;
  const $ = (id) => document.getElementById(id);

  function fail(message) {
    body.dataset.state = "error";
    $("status").textContent = message;
    console.error(message);
  }

  // Dagster UI URL of the partition that produced quadrant (x, y); null when the sidecar has no UI URL.
  function dagsterLink(side, x, y) {
    const d = side.dagster || {};
    if (!d.url) return null;
    const key = d.partition_key_template.split("{x}").join(String(x)).split("{y}").join(String(y));
    const asset = String(d.asset).split("/").map(encodeURIComponent).join("/");
    return `${d.url}/assets/${asset}?view=partitions&partition=${encodeURIComponent(key)}`;
  }

  function setLink(el, href) {
    if (href) {
      el.href = href;
      el.hidden = false;
    } else {
      el.removeAttribute("href");
      el.hidden = true;
    }
  }

  async function loadSidecar() {
    const res = await fetch(`${encodeURIComponent(mapName)}.json`, { cache: "no-cache" });
    if (!res.ok) throw new Error(`${mapName}.json: HTTP ${res.status}; was the pyramid built into this directory?`);
    return res.json();
  }

  async function main() {
    if (typeof OpenSeadragon !== "function") {
      fail("OpenSeadragon did not load (openseadragon/openseadragon.min.js); re-run write_viewer().");
      return;
    }
    let side;
    try {
      side = await loadSidecar();
    } catch (err) {
      fail(`Cannot load the map: ${err.message}`);
      return;
    }
    const q = side.quadrant_px;
    const { x0, y0 } = side.grid;
    document.title = side.title;
    $("title").textContent = side.title;
    $("attribution").textContent = side.attribution || "";

    const viewer = OpenSeadragon({
      id: "map",
      prefixUrl: "openseadragon/images/",
      // pmtiles.html adds pmtiles-source.js: the same tiles from the PMTiles archive by HTTP range requests.
      tileSources: (window.isonycTileSource && window.isonycTileSource(side)) || side.dzi,
      // Pixel art: never interpolate. imageSmoothingEnabled covers the canvas and WebGL drawers
      // (NEAREST texture filtering); smoothTileEdgesMinZoom=Infinity stops the canvas drawer from
      // redrawing tiles through a smoothed sketch canvas when zoomed in.
      imageSmoothingEnabled: false,
      smoothTileEdgesMinZoom: Infinity,
      maxZoomPixelRatio: 1, // at most 1 image pixel : 1 CSS pixel — the tiles hold no more detail
      minZoomImageRatio: 0.8,
      visibilityRatio: 0.5,
      drawer: params.get("drawer") || "auto",
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      navigatorSizeRatio: 0.18,
      showRotationControl: false,
      animationTime: 0.4,
      immediateRender: false,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      placeholderFillStyle: "#232d3b",
    });

    const state = { hover: null, selected: null, overlay: null };
    // Quadrants shown as their dimmed whitebox render because no generation exists yet (publish placeholders).
    const placeholders = new Set(((side.publish || {}).placeholders || []).map(([px, py]) => `${px},${py}`));

    // Screen position (relative to the viewer element) → quadrant key, or null off the map.
    function quadrantAt(pixel) {
      const item = viewer.world.getItemAt(0);
      if (!item) return null;
      const img = item.viewerElementToImageCoordinates(pixel);
      if (!(img.x >= 0 && img.y >= 0 && img.x < side.image.width && img.y < side.image.height)) return null;
      return { x: x0 + Math.floor(img.x / q), y: y0 + Math.floor(img.y / q) };
    }

    function showHover(key) {
      state.hover = key;
      const out = $("quadrant");
      if (key) {
        out.textContent = `${key.x}, ${key.y}${placeholders.has(`${key.x},${key.y}`) ? " · placeholder (render)" : ""}`;
        out.dataset.x = key.x;
        out.dataset.y = key.y;
      } else {
        out.textContent = "—";
        delete out.dataset.x;
        delete out.dataset.y;
      }
      setLink($("quadrant-link"), key && dagsterLink(side, key.x, key.y));
    }

    function select(key) {
      state.selected = key;
      const out = $("selected");
      if (state.overlay) {
        viewer.removeOverlay(state.overlay);
        state.overlay = null;
      }
      if (!key) {
        out.textContent = "click a quadrant";
        setLink($("selected-link"), null);
        return;
      }
      out.textContent = `${key.x}, ${key.y}`;
      setLink($("selected-link"), dagsterLink(side, key.x, key.y));
      const item = viewer.world.getItemAt(0);
      const el = document.createElement("div");
      el.className = "selected-quadrant";
      viewer.addOverlay({ element: el, location: item.imageToViewportRectangle((key.x - x0) * q, (key.y - y0) * q, q, q) });
      state.overlay = el;
      history.replaceState(null, "", `#${key.x},${key.y}`);
    }

    new OpenSeadragon.MouseTracker({
      element: viewer.canvas,
      moveHandler: (e) => showHover(quadrantAt(e.position)),
      leaveHandler: () => showHover(null),
    });
    viewer.addHandler("canvas-click", (e) => {
      if (e.quick) select(quadrantAt(e.position));
    });

    viewer.addHandler("open-failed", (e) => fail(`Cannot open ${side.dzi}: ${e.message}`));
    viewer.addHandler("open", () => {
      const item = viewer.world.getItemAt(0);
      // Deep link #x,y: centre that quadrant at 1:1 and select it.
      const m = /^#(-?\d+),(-?\d+)$/.exec(window.location.hash);
      if (m) {
        const key = { x: parseInt(m[1], 10), y: parseInt(m[2], 10) };
        const c = item.imageToViewportCoordinates((key.x - x0 + 0.5) * q, (key.y - y0 + 0.5) * q);
        viewer.viewport.panTo(c, true);
        viewer.viewport.zoomTo(item.imageToViewportZoom(1), null, true);
        select(key);
      }
      const ready = () => {
        body.dataset.state = "ready";
        const ph = placeholders.size
          ? ` · ${placeholders.size} placeholder${placeholders.size === 1 ? "" : "s"} (dimmed render, not generated yet)`
          : "";
        $("status").textContent = `${side.grid.width}×${side.grid.height} quadrants${ph} · scroll to zoom, click to select`;
      };
      if (item.getFullyLoaded()) ready();
      else item.addOnceHandler("fully-loaded-change", ready);
    });

    window.isonyc = { viewer, side, quadrantAt, select, dagsterLink: (x, y) => dagsterLink(side, x, y) };
    window.dispatchEvent(new CustomEvent("isonyc:viewer", { detail: window.isonyc })); // layers.js
  }

  main();
})();
