// Splat viewer: one Gaussian-splat scene of the map (scenes/<name>/gf.ply, written by the scene_3d asset) drawn by
// Spark on three.js, with orbit controls. URL: splat.html?scene=<name>. World frame of the .ply: metres east,
// north, height (z up), so the camera's up is +z and the first view looks along the map's own camera direction.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

const body = document.body;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const name = params.get("scene") || "";

function fail(message) {
  body.dataset.state = "error";
  $("status").textContent = message;
  console.error(message);
}

// The map camera's view direction (world, unit): azimuth/elevation in degrees as in geo.geometry / lift.camera.
function viewDirection(azimuthDeg, elevationDeg) {
  const a = (azimuthDeg * Math.PI) / 180;
  const d = (-elevationDeg * Math.PI) / 180;
  return new THREE.Vector3(Math.sin(a) * Math.cos(d), Math.cos(a) * Math.cos(d), -Math.sin(d));
}

async function sceneEntry() {
  // scenes/index.json lists each scene's rectangle, figures and camera angles; a bare .ply still opens without it.
  try {
    const res = await fetch("scenes/index.json", { cache: "no-cache" });
    if (!res.ok) return {};
    const index = await res.json();
    return (index.scenes || []).find((s) => s.name === name) || {};
  } catch (err) {
    return {};
  }
}

async function main() {
  if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(name)) {
    fail(`No scene named: open splat.html?scene=<region> (got "${name}").`);
    return;
  }
  const entry = await sceneEntry();
  document.title = `${name} · 3D scene`;
  $("title").textContent = `3D scene: ${name}`;
  const base = `scenes/${encodeURIComponent(name)}/`;
  if (entry.x0 !== undefined) {
    $("map-link").href = `index.html#${entry.x0 + Math.floor((entry.w || 1) / 2)},${entry.y0 + Math.floor((entry.h || 1) / 2)}`;
  }
  for (const [id, file] of [["rrd-link", entry.rrd], ["video-link", entry.video]]) {
    if (file) {
      $(id).href = base + file;
      $(id).hidden = false;
    }
  }

  const canvas = $("view");
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  renderer.setClearColor(0x1b2330, 1);
  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(35, 1, 0.5, 20000);
  camera.up.set(0, 0, 1);
  scene.add(new SparkRenderer({ renderer }));
  const controls = new OrbitControls(camera, canvas);
  controls.enableDamping = false;

  function resize() {
    const w = canvas.clientWidth || window.innerWidth;
    const h = canvas.clientHeight || window.innerHeight;
    renderer.setSize(w, h, false);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
  }
  window.addEventListener("resize", resize);
  resize();

  const mesh = new SplatMesh({ url: `${base}gf.ply` });
  scene.add(mesh);
  try {
    await mesh.initialized;
  } catch (err) {
    fail(`Cannot load ${base}gf.ply: ${err.message || err}`);
    return;
  }
  const box = mesh.getBoundingBox(true);
  if (box.isEmpty()) {
    fail(`${base}gf.ply holds no splats.`);
    return;
  }
  const target = box.getCenter(new THREE.Vector3());
  const radius = Math.max(box.getSize(new THREE.Vector3()).length() / 2, 1);
  const distance = (radius / Math.sin(((camera.fov / 2) * Math.PI) / 180)) * 0.8;
  const dir = viewDirection(entry.azimuth_deg ?? -15, entry.elevation_deg ?? -45);
  camera.position.copy(target).addScaledVector(dir, -distance);
  camera.near = distance / 100;
  camera.far = distance * 10;
  camera.updateProjectionMatrix();
  controls.target.copy(target);
  controls.maxDistance = distance * 4;
  controls.update();

  renderer.setAnimationLoop(() => renderer.render(scene, camera));

  const count = mesh.packedSplats ? mesh.packedSplats.numSplats : entry.splats;
  const figures = [count !== undefined ? `${Number(count).toLocaleString("en")} splats` : null];
  if (entry.psnr_input_db !== undefined) figures.push(`PSNR ${entry.psnr_input_db} dB at the map view`);
  $("status").textContent = `${figures.filter(Boolean).join(" · ")} · drag to orbit, scroll to zoom, right-drag to pan`;

  // A hook for tests and scripts: orbit by angles (degrees) about the target, as a drag does.
  window.isonycSplat = {
    camera,
    controls,
    mesh,
    splats: count,
    orbit(dAzimuthDeg, dElevationDeg) {
      const offset = camera.position.clone().sub(controls.target);
      const spherical = new THREE.Spherical().setFromVector3(new THREE.Vector3(offset.x, offset.z, -offset.y));
      spherical.theta += (dAzimuthDeg * Math.PI) / 180;
      spherical.phi = Math.min(Math.max(spherical.phi - (dElevationDeg * Math.PI) / 180, 0.01), Math.PI - 0.01);
      const v = new THREE.Vector3().setFromSpherical(spherical);
      camera.position.copy(controls.target).add(new THREE.Vector3(v.x, -v.z, v.y));
      controls.update();
      return camera.position.toArray();
    },
  };
  requestAnimationFrame(() => requestAnimationFrame(() => { body.dataset.state = "ready"; }));
}

main().catch((err) => fail(`Viewer error: ${err.message || err}`));
