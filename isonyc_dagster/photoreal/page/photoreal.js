// The photoreal render page: one WebGL canvas, one TilesRenderer per tileset URL (kept across renders so
// neighbouring quadrants reuse loaded tiles), and window.isonycRender(spec), which resolves only once the
// renderer reports nothing left to load at the target screen-space error for the whole frame.
import * as THREE from 'three';
import { TilesRenderer } from '3d-tiles-renderer';
import { GLTFExtensionsPlugin } from '3d-tiles-renderer/plugins';
import { DRACOLoader } from 'three/addons/loaders/DRACOLoader.js';

const ROOT_LOADED = 4; // 3d-tiles-renderer's LOADED state
const QUIET_UPDATES = 2; // consecutive idle updates that prove the traversal has settled

const canvas = document.getElementById('c');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, alpha: false, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
const scene = new THREE.Scene();
const camera = new THREE.OrthographicCamera();
camera.matrixAutoUpdate = false;
const tilesets = new Map();
let draco = null;

function tilesetFor(url) {
  let entry = tilesets.get(url);
  if (entry) return entry;
  if (!draco) {
    draco = new DRACOLoader();
    draco.setDecoderPath('/nm/three/examples/jsm/libs/draco/gltf/');
  }
  const tiles = new TilesRenderer(url);
  tiles.registerPlugin(new GLTFExtensionsPlugin({ dracoLoader: draco, autoDispose: false }));
  // Never refuse a tile for lack of room: a refused tile would leave the frame at a coarser level of detail.
  tiles.lruCache.minSize = 20000;
  tiles.lruCache.maxSize = 40000;
  tiles.lruCache.minBytesSize = 1.5e9;
  tiles.lruCache.maxBytesSize = 2e9;
  entry = { tiles, errors: [], copyright: '' };
  tiles.addEventListener('load-error', (e) => {
    const where = e.url || (e.tile && e.tile.content && e.tile.content.uri) || 'tileset';
    entry.errors.push(`${where}: ${(e.error && e.error.message) || e.error}`);
  });
  tiles.addEventListener('load-tileset', (e) => {
    if (e.tileset && e.tileset.asset && e.tileset.asset.copyright && !entry.copyright) {
      entry.copyright = e.tileset.asset.copyright;
    }
  });
  tiles.setCamera(camera);
  tilesets.set(url, entry);
  return entry;
}

function busy(tiles) {
  const s = tiles.stats;
  return (
    tiles.rootLoadingState !== ROOT_LOADED ||
    s.queued + s.downloading + s.parsing > 0 ||
    s.refused > 0 ||
    tiles.downloadQueue.running ||
    tiles.parseQueue.running ||
    tiles.processNodeQueue.running
  );
}

function statsOf(tiles) {
  const s = tiles.stats;
  return {
    queued: s.queued, downloading: s.downloading, parsing: s.parsing, failed: s.failed, loaded: s.loaded,
    visible: s.visible, refused: s.refused, inFrustum: s.inFrustum,
  };
}

// Copyright strings of the visible tiles' glTF assets, most frequent first (Google's attribution rule).
function attributions(entry) {
  const counts = new Map();
  for (const tile of entry.tiles.visibleTiles) {
    const c = tile.engineData && tile.engineData.metadata && tile.engineData.metadata.asset
      && tile.engineData.metadata.asset.copyright;
    for (const part of (c || '').split(';').map((p) => p.trim()).filter(Boolean)) {
      counts.set(part, (counts.get(part) || 0) + 1);
    }
  }
  const parts = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map((e) => e[0]);
  if (entry.copyright && !parts.includes(entry.copyright)) parts.push(entry.copyright);
  return parts.join('; ');
}

function setCamera(spec) {
  renderer.setSize(spec.width, spec.height, false);
  camera.matrix.fromArray(spec.matrix);
  camera.matrixWorldNeedsUpdate = true;
  camera.updateMatrixWorld(true);
  camera.projectionMatrix.fromArray(spec.projection);
  camera.projectionMatrixInverse.copy(camera.projectionMatrix).invert();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function glInfo() {
  const gl = renderer.getContext();
  const dbg = gl.getExtension('WEBGL_debug_renderer_info');
  return `${gl.getParameter(gl.VERSION)} | ${dbg ? gl.getParameter(dbg.UNMASKED_RENDERER_WEBGL) : 'unknown renderer'}`;
}

window.isonycRender = async function isonycRender(spec) {
  const t0 = performance.now();
  setCamera(spec);
  const entry = tilesetFor(spec.url);
  const { tiles } = entry;
  for (const child of [...scene.children]) if (child !== tiles.group) scene.remove(child);
  if (tiles.group.parent !== scene) scene.add(tiles.group);
  entry.errors.length = 0;
  tiles.resetFailedTiles();
  tiles.errorTarget = spec.errorTarget;
  tiles.setResolution(camera, spec.width, spec.height);
  renderer.setClearColor(new THREE.Color(spec.background), 1);
  let quiet = 0;
  let updates = 0;
  for (;;) {
    tiles.update();
    updates += 1;
    if (entry.errors.length) {
      throw new Error(`tiles failed to load (${entry.errors.length}): ${entry.errors.slice(0, 3).join('; ')}`);
    }
    quiet = busy(tiles) ? 0 : quiet + 1;
    if (quiet >= QUIET_UPDATES) break;
    if (performance.now() - t0 > spec.timeoutMs) {
      const s = statsOf(tiles);
      throw new Error(
        `incomplete after ${Math.round(performance.now() - t0)} ms: ${s.queued} queued, ${s.downloading} downloading, ` +
        `${s.parsing} parsing, ${s.refused} refused` + (tiles.rootLoadingState !== ROOT_LOADED ? ', root tileset not loaded' : ''),
      );
    }
    await sleep(quiet ? 0 : 4);
  }
  const tLoaded = performance.now();
  renderer.render(scene, camera);
  const png = canvas.toDataURL('image/png');
  return {
    png,
    stats: statsOf(tiles),
    updates,
    attribution: attributions(entry),
    loadMs: tLoaded - t0,
    drawMs: performance.now() - tLoaded,
    gl: glInfo(),
  };
};

window.isonycReady = true;
