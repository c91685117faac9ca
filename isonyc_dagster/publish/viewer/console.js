// The map as a console (served by `isonyc serve`, which mounts /api/ beside the map).
// QA overlays per quadrant; click a quadrant → a panel with its versions, producing step and context (links into
// Dagster), check results and actions. Mutations carry the console token (entered once, kept in sessionStorage).
// Without /api/ (a map deployed as static files) this script does nothing.
/* global OpenSeadragon */
"use strict";

(function () {
  const TOKEN_KEY = "isonyc-console-token";
  const ORDER = ["failing", "flagged", "stale", "missing", "repaired"]; // overlay priority
  const state = { info: null, status: null, key: null, overlays: [], show: true };

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids) if (kid) e.append(kid);
    return e;
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path, opts) {
    const res = await fetch(`api/${path}`, { cache: "no-store", ...(opts || {}) });
    const type = res.headers.get("Content-Type") || "";
    const body = type.includes("json") ? await res.json() : await res.blob();
    if (!res.ok) throw new Error((body && body.error) || `HTTP ${res.status}`);
    return body;
  }

  function post(path, body, contentType) {
    return api(path, {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": contentType || "application/json" },
      body: contentType ? body : JSON.stringify(body),
    });
  }

  function say(text, isError) {
    const out = document.getElementById("console-message");
    out.textContent = text;
    out.dataset.error = isError ? "1" : "";
  }

  // --- overlays -------------------------------------------------------------------------------------------------
  function statusClass(s) {
    const on = {
      failing: s.checks.length > 0,
      flagged: s.flags.includes("flagged"),
      stale: s.stale,
      missing: s.missing,
      repaired: s.repaired,
    };
    return ORDER.find((k) => on[k]) || null;
  }

  function drawOverlays(iso) {
    for (const o of state.overlays) iso.viewer.removeOverlay(o);
    state.overlays = [];
    const item = iso.viewer.world.getItemAt(0);
    if (!state.status || !item || !state.show) return;
    const q = iso.side.quadrant_px;
    const { x0, y0 } = iso.side.grid;
    for (const [key, s] of Object.entries(state.status.quadrants)) {
      const cls = statusClass(s);
      if (!cls) continue;
      const [x, y] = key.split("|").map(Number);
      const div = el("div", { class: `qa-overlay qa-${cls}`, "data-key": key, title: `${key}: ${cls}` });
      iso.viewer.addOverlay({ element: div, location: item.imageToViewportRectangle((x - x0) * q, (y - y0) * q, q, q) });
      state.overlays.push(div);
    }
  }

  async function refreshStatus(iso) {
    state.status = await api("status");
    const c = state.status.counts;
    document.getElementById("console-counts").textContent =
      `${c.failing} failing · ${c.flagged} flagged · ${c.stale} stale · ${c.missing} missing · ${c.repaired} repaired`;
    drawOverlays(iso);
  }

  // --- the quadrant panel ---------------------------------------------------------------------------------------
  function link(text, href, cls) {
    return el("a", { href, target: "_blank", rel: "noopener", class: cls || "dagster", text });
  }

  async function runAction(iso, body) {
    say(`launching ${body.action}…`);
    const res = await post("action", body);
    say(`${body.action}: run ${res.run_id.slice(0, 8)} launched in Dagster…`);
    document.getElementById("console-run").replaceChildren(link(`run ${res.run_id.slice(0, 8)} ↗`, res.url));
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const run = await api(`run/${res.run_id}`);
      if (["SUCCESS", "FAILURE", "CANCELED"].includes(run.status)) {
        await refreshAll(iso);
        say(`${body.action}: run ${run.status.toLowerCase()}`, run.status !== "SUCCESS");
        document.body.dataset.consoleRun = run.status;
        return;
      }
    }
  }

  async function refreshAll(iso) {
    iso.viewer.world.resetItems(); // refetch tiles (the server revalidates them: redrawn ones come back new)
    await refreshStatus(iso);
    if (state.key) await openPanel(iso, state.key);
  }

  function act(iso, fn) {
    return async () => {
      if (!token()) {
        say("enter the console token (printed by `isonyc serve`) first", true);
        return;
      }
      try {
        await fn();
      } catch (err) {
        say(err.message, true);
        document.body.dataset.consoleRun = "ERROR";
      }
    };
  }

  function versionRow(iso, key, v) {
    const [x, y] = key.split("|").map(Number);
    const revert = v.active
      ? el("span", { class: "active-mark", text: "active" })
      : el("button", {
          class: "revert",
          "data-version": v.version,
          text: `Revert to v${v.version}`,
          onclick: act(iso, () => runAction(iso, { action: "revert", quadrants: [key], version: v.version })),
        });
    return el(
      "li",
      { class: v.active ? "version active" : "version", "data-version": v.version },
      el("img", { src: v.preview, alt: `version ${v.version}`, width: 64, height: 64 }),
      el("span", { text: `v${v.version} · ${v.made_by} · ${new Date(v.created_at * 1000).toISOString().slice(0, 16)}` }),
      revert,
    );
  }

  function actionsBox(iso, d) {
    const key = d.key;
    const [x, y] = key.split("|").map(Number);
    const flagBtn = (name) =>
      el("button", {
        class: `flag-${name}`,
        "aria-pressed": d.flags[name] ? "true" : "false",
        text: { flagged: ["Flag", "Unflag"], starred: ["Star", "Unstar"], reference: ["Mark reference", "Unmark reference"] }[name][d.flags[name] ? 1 : 0],
        onclick: act(iso, async () => {
          await post("flag", { x, y, flag: name, value: !d.flags[name] });
          await refreshAll(iso);
        }),
      });
    const seed = el("input", { id: "console-seed", type: "number", placeholder: "seed", "aria-label": "seed" });
    const prompt = el("input", { id: "console-prompt", type: "text", placeholder: "prompt (optional)", "aria-label": "prompt" });
    const seedValue = () => (seed.value === "" ? null : parseInt(seed.value, 10));
    const file = el("input", { id: "console-import-file", type: "file", accept: "image/png", "aria-label": "edited PNG" });
    return el(
      "div",
      { class: "actions" },
      el("div", {}, flagBtn("flagged"), flagBtn("starred"), flagBtn("reference")),
      el(
        "div",
        {},
        seed,
        el("button", {
          id: "console-repair",
          text: "Repair",
          onclick: act(iso, () => runAction(iso, { action: "repair", quadrants: [key], seed: seedValue() })),
        }),
      ),
      el(
        "div",
        {},
        prompt,
        el("button", {
          id: "console-regenerate",
          text: `Regenerate ${d.step.asset} ${d.step.partition}`,
          onclick: act(iso, () =>
            runAction(iso, {
              action: "regenerate",
              step: `${d.step.asset}:${d.step.partition}`,
              seed: seedValue() ?? Math.floor(Math.random() * 1e6),
              prompt: prompt.value,
            }),
          ),
        }),
      ),
      el(
        "div",
        {},
        el("a", { id: "console-export", href: `api/export?x=${x}&y=${y}`, download: `neighbourhood_${x}_${y}.png`, text: "Export 2×2 PNG" }),
        file,
        el("button", {
          id: "console-import",
          text: `Import into ${key}`,
          onclick: act(iso, async () => {
            if (!file.files.length) throw new Error("choose the edited PNG first");
            const res = await post(`import?x=${x}&y=${y}&take=${encodeURIComponent(key)}`, file.files[0], "image/png");
            say(`imported ${res.imported.map((i) => `${i.key} v${i.version}`).join(", ")}`);
            await refreshAll(iso);
          }),
        }),
      ),
    );
  }

  async function openPanel(iso, key) {
    state.key = key;
    const box = document.getElementById("console-quadrant");
    let d;
    try {
      d = await api(`quadrant?x=${key.split("|")[0]}&y=${key.split("|")[1]}`);
    } catch (err) {
      box.replaceChildren(el("p", { class: "muted", text: err.message }));
      return;
    }
    const checks = Object.entries(d.checks).map(([name, c]) =>
      el("li", { class: c.passed ? "pass" : "fail", text: `${name}: ${c.passed ? "pass" : `FAIL ${JSON.stringify(c.figures)}`}` }),
    );
    box.replaceChildren(
      el("h2", { text: `Quadrant ${d.key}` }),
      el(
        "p",
        {},
        link(d.step.label + " ↗", d.step.url, "dagster producing-step"),
        " ",
        d.step.template ? link("template", d.step.template, "blob") : null,
        " ",
        d.step.output ? link("output", d.step.output, "blob") : null,
      ),
      el(
        "p",
        { class: "context" },
        el("span", { class: "label", text: "context " }),
        ...(d.context.length
          ? d.context.map((c) => link(`${c.asset} ${c.partition} ↗`, c.url, "dagster context-step"))
          : [el("span", { class: "muted", text: "none" })]),
      ),
      el("p", {}, link(`generation ${d.key} ↗`, d.links.generation), " ", link(`render ${d.key} ↗`, d.links.render)),
      el("ul", { class: "checks" }, ...checks),
      el("ul", { class: "versions" }, ...d.versions.slice().reverse().map((v) => versionRow(iso, d.key, v))),
      actionsBox(iso, d),
    );
    box.dataset.key = d.key;
  }

  // --- setup ----------------------------------------------------------------------------------------------------
  function buildPanel(iso) {
    const tokenInput = el("input", {
      id: "console-token",
      type: "password",
      placeholder: "console token",
      "aria-label": "console token",
      value: token(),
      onchange: (e) => sessionStorage.setItem(TOKEN_KEY, e.target.value.trim()),
    });
    const overlays = el("input", {
      id: "console-overlays",
      type: "checkbox",
      checked: true,
      onchange: (e) => {
        state.show = e.target.checked;
        drawOverlays(iso);
      },
    });
    const aside = el(
      "aside",
      { id: "console", "aria-label": "Map console" },
      el("div", { class: "row" }, tokenInput, el("label", {}, overlays, " QA overlays")),
      el("p", { id: "console-counts", class: "muted", text: "…" }),
      el("p", { class: "legend" }, ...ORDER.map((k) => el("span", { class: `swatch qa-${k}`, text: k }))),
      el("div", { id: "console-quadrant" }, el("p", { class: "muted", text: "click a quadrant" })),
      el("p", { id: "console-message", role: "status" }),
      el("p", { id: "console-run" }),
    );
    document.body.append(aside);
  }

  async function start(iso) {
    try {
      state.info = await api("info");
    } catch (err) {
      return; // a static map: no console here
    }
    document.body.dataset.console = "on";
    buildPanel(iso);
    iso.viewer.addHandler("canvas-click", (e) => {
      if (!e.quick || (window.isonycBounds && window.isonycBounds.editing)) return;
      const k = iso.quadrantAt(e.position);
      if (k) openPanel(iso, `${k.x}|${k.y}`);
    });
    const ready = async () => {
      await refreshStatus(iso);
      const m = /^#(-?\d+),(-?\d+)$/.exec(window.location.hash);
      if (m) await openPanel(iso, `${m[1]}|${m[2]}`);
      document.body.dataset.consoleState = "ready";
    };
    if (iso.viewer.world.getItemAt(0)) ready();
    else iso.viewer.addOnceHandler("open", ready);
  }

  window.isonycConsole = { state, openPanel: (key) => openPanel(window.isonyc, key), refresh: () => refreshAll(window.isonyc) };
  if (window.isonyc) start(window.isonyc);
  else window.addEventListener("isonyc:viewer", (e) => start(e.detail), { once: true });
})();
