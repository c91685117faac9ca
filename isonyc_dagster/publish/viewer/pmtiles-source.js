// PMTiles tile source for the map viewer: reads the deployed single-file archive with HTTP range requests
// (pmtiles.js, from npm) instead of one request per DZI tile file. Loaded only by pmtiles.html.
// Zoom z of the archive is DZI level z0 + z (see isonyc_dagster/publish/pmtiles.py); edge tiles are padded
// to the full tile size in the archive and cropped back here, so the pixels match the DZI tree exactly.
/* global OpenSeadragon, pmtiles */
"use strict";

(function () {
  function makeSource(side) {
    const archive = new pmtiles.PMTiles(side.pmtiles);
    const t = side.tile_size;
    const zmax = Math.ceil(Math.log2(Math.max(side.grid.width, side.grid.height)));
    const z0 = side.max_level - zmax;
    const levels = side.levels;
    const src = new OpenSeadragon.TileSource({
      width: side.image.width,
      height: side.image.height,
      tileSize: t,
      tileOverlap: 0,
      minLevel: z0,
      maxLevel: side.max_level,
    });
    src.getTileUrl = (level, x, y) => `pmtiles:${level - z0}/${x}/${y}`;
    src.downloadTileStart = (job) => {
      const [z, x, y] = job.src.slice("pmtiles:".length).split("/").map(Number);
      const lv = levels[z + z0];
      const w = Math.min(t, lv.width - x * t);
      const h = Math.min(t, lv.height - y * t);
      archive
        .getZxy(z, x, y, job.userData.abort ? job.userData.abort.signal : undefined)
        .then((res) => {
          if (!res || !res.data) throw new Error(`no tile ${z}/${x}/${y} in ${side.pmtiles}`);
          return createImageBitmap(new Blob([res.data]));
        })
        .then((bmp) => {
          const canvas = document.createElement("canvas");
          canvas.width = w;
          canvas.height = h;
          const ctx = canvas.getContext("2d");
          ctx.imageSmoothingEnabled = false;
          ctx.drawImage(bmp, 0, 0, w, h, 0, 0, w, h);
          job.finish(ctx, null, "context2d");
        })
        .catch((err) => job.fail(`[pmtiles] ${err.message}`, null));
    };
    src.downloadTileAbort = () => {};
    return src;
  }

  // viewer.js asks for a tile source; the DZI tree is the default when this page has no archive.
  window.isonycTileSource = (side) =>
    document.body.dataset.source === "pmtiles" && side.pmtiles ? makeSource(side) : null;
})();
