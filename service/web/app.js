// BrainSynth's page: sign in with an API key, design a cohort from GET /v1/models, watch it over the event
// stream, look at every brain's previews, download the archive. Every call goes through the v1 API; the key
// stays in sessionStorage and travels only in the Authorization header. Streams, images and downloads use a
// short-lived link token for one cohort (POST /v1/cohorts/{id}/link-token), never the key.
"use strict";

const KEY_STORAGE = "brainsynth.api_key";
const COVARIATES = [
  ["age", "Age"],
  ["ventricular_volume_mm3", "Ventricular volume"],
  ["brain_volume_mm3", "Brain volume"],
];
const $ = (selector, root = document) => root.querySelector(selector);
let stream = null; // the open EventSource, closed whenever the view changes

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    return { status: 0, body: { detail: `the API did not answer (${err.message}); is the service up?` } };
  }
  if (response.status === 401) { signOut("Your API key was not accepted; sign in again."); }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? parseJson(await response.text()) : null;
  return { status: response.status, body, headers: response.headers };
}

// Seeds are 63-bit integers: beyond 2^53 a JavaScript number would change them (and the brain they
// regenerate), so they are kept as the exact digits the API sent (JSON.parse source text access).
function parseJson(text) {
  return JSON.parse(text, (key, value, context) => (key === "seed" && context && context.source ? context.source : value));
}

function detailText(body) {
  if (!body) return "unexpected answer from the API";
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return JSON.stringify(body);
}

function fmt(value, fixedDigits = null) {
  const digits = fixedDigits === null ? { maximumFractionDigits: 6 } : { maximumFractionDigits: fixedDigits, minimumFractionDigits: fixedDigits };
  return Number(value).toLocaleString("en-US", digits);
}

// ---- sign in / out -------------------------------------------------------------------------------------
function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  closeStream();
  $("#nav").hidden = true;
  $("#view").replaceChildren();
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message;
}

async function signIn(event) {
  event.preventDefault();
  const key = $("#api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, key);
  const { status, body } = await api("/v1/models");
  if (status !== 200) {
    signOut(status === 401 ? "That API key was not accepted." : detailText(body));
    return;
  }
  $("#api-key").value = "";
  showApp();
}

function showApp() {
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  route();
}

// ---- routing -------------------------------------------------------------------------------------------
function closeStream() { if (stream) { stream.close(); stream = null; } }

// Each navigation gets a ticket; a view whose request answers after a later navigation drops its answer
// (signing in renders the list; a link followed before the list arrived must not be replaced by it).
let routeTicket = 0;
const superseded = (ticket) => ticket !== routeTicket;

function route() {
  routeTicket += 1;
  if (!apiKey()) { signOut(); return; }
  closeStream();
  const hash = location.hash || "#/cohorts";
  const match = hash.match(/^#\/cohorts\/([^/]+)$/);
  if (hash === "#/new") renderForm();
  else if (match) renderCohort(decodeURIComponent(match[1]));
  else renderList();
}

// ---- the cohort form -----------------------------------------------------------------------------------
function numberInput(name, range, value, label) {
  return el("input", { type: "number", name, id: name, step: "any", min: range.min, max: range.max,
                       value, "aria-label": label, required: true });
}

function covariateFieldset(field, label, range) {
  const mode = el("select", { name: `${field}.mode`, "aria-label": `${label}: value or range` },
    el("option", { value: "range", text: "range" }), el("option", { value: "value", text: "value" }));
  const low = numberInput(`${field}.min`, range, range.min, `${label} minimum`);
  const high = numberInput(`${field}.max`, range, range.max, `${label} maximum`);
  const single = numberInput(`${field}.value`, range, (range.min + range.max) / 2, `${label} value`);
  const rangeRow = el("span", { class: "row" }, low, el("span", { text: "to" }), high);
  const valueRow = el("span", { class: "row", hidden: true }, single);
  mode.addEventListener("change", () => {
    rangeRow.hidden = mode.value !== "range";
    valueRow.hidden = mode.value !== "value";
  });
  return el("fieldset", { "data-field": `covariates.${field}` },
    el("legend", { text: `${label} (${range.unit})` }),
    el("div", { class: "row" }, mode, rangeRow, valueRow),
    el("span", { class: "range-hint", text: `model range ${fmt(range.min)}-${fmt(range.max)} ${range.unit}` +
      (range.description ? `: ${range.description}` : "") }),
    el("p", { class: "error", "data-error-for": `covariates.${field}` }));
}

function fieldError(name) { return el("p", { class: "error", "data-error-for": name }); }

async function renderForm() {
  const view = $("#view");
  const ticket = routeTicket;
  view.replaceChildren(el("h2", { text: "New cohort" }), el("p", { text: "Loading models…" }));
  const { status, body } = await api("/v1/models");
  if (superseded(ticket)) return;
  if (status !== 200) { view.replaceChildren(el("p", { class: "error", text: detailText(body) })); return; }
  const models = body.models.filter((m) => m.ready);
  if (!models.length) { view.replaceChildren(el("p", { class: "error", text: "No model with weights is registered on this server." })); return; }
  const form = el("form", { id: "cohort-form", novalidate: true });
  const modelSelect = el("select", { name: "model", id: "model" },
    ...models.map((m) => el("option", { value: m.name, text: `${m.name} ${m.version}` })));
  const specific = el("div", { id: "model-fields", class: "subjects" });
  const general = el("p", { class: "error", id: "form-error", role: "alert" });

  function drawModelFields() {
    const model = models.find((m) => m.name === modelSelect.value);
    const samplers = Object.keys(model.samplers);
    const sampler = el("select", { name: "sampler", id: "sampler" },
      ...samplers.map((name) => el("option", { value: name, text: name })));
    const steps = el("input", { type: "number", name: "steps", id: "steps", min: 1, max: model.max_steps, step: 1,
                                placeholder: String(model.samplers[samplers[0]].default_steps) });
    sampler.addEventListener("change", () => { steps.placeholder = String(model.samplers[sampler.value].default_steps); });
    // classifier-free guidance, for models trained with condition dropout (GET /v1/models: guidance.max > 1)
    const guided = model.guidance && model.guidance.max > model.guidance.min;
    const guidance = guided ? [el("label", { for: "guidance", text: "guidance" }),
      el("input", { type: "number", id: "guidance", name: "guidance", min: model.guidance.min, max: model.guidance.max,
                    step: 0.5, placeholder: String(model.guidance.default) }),
      el("span", { class: "range-hint", text: `${model.guidance.min}-${model.guidance.max}; larger follows the covariates more closely; empty: ${model.guidance.default}` })] : [];
    specific.replaceChildren(
      el("p", { class: "range-hint", text: [model.description, `grid ${model.image_shape.join("×")} at ` +
        `${model.voxel_size_mm[0]} mm`, model.intended_use].filter(Boolean).join(". ") }),
      ...COVARIATES.map(([field, label]) => covariateFieldset(field, label, model.conditioning[field])),
      el("fieldset", { "data-field": "covariates.sex" }, el("legend", { text: "Sex" }),
        el("label", { for: "female_fraction", text: "Female fraction (0-1) " }),
        el("input", { type: "number", id: "female_fraction", name: "female_fraction", min: 0, max: 1, step: 0.05, value: 0.5 }),
        fieldError("covariates.sex")),
      el("fieldset", { "data-field": "sampler" }, el("legend", { text: "Sampler" }),
        el("div", { class: "row" }, sampler,
          el("label", { for: "steps", text: "steps" }), steps,
          el("span", { class: "range-hint", text: `1-${model.max_steps}; empty: the sampler's default` })),
        el("div", { class: "row" }, ...guidance),
        fieldError("sampler"), fieldError("guidance")),
      el("label", { class: "row" }, el("input", { type: "checkbox", id: "extrapolate", name: "extrapolate" }),
        "Allow covariates outside the model's training range (extrapolate; less reliable)"),
      fieldError("extrapolate"));
  }
  modelSelect.addEventListener("change", drawModelFields);

  form.append(
    el("label", { for: "model", text: "Model" }), modelSelect, fieldError("model"),
    el("label", { for: "name", text: "Dataset name (optional)" }),
    el("input", { id: "name", name: "name", maxlength: 200 }), fieldError("name"),
    el("div", { class: "row" },
      el("label", { for: "n_subjects", text: "Subjects" }),
      el("input", { type: "number", id: "n_subjects", name: "n_subjects", min: 1, step: 1, value: 4, required: true }),
      el("label", { for: "seed", text: "Seed (optional)" }),
      el("input", { type: "number", id: "seed", name: "seed", min: 0, step: 1 })),
    fieldError("n_subjects"), fieldError("seed"),
    specific, general,
    el("button", { type: "submit", id: "submit-cohort", text: "Generate cohort" }));
  drawModelFields();
  form.addEventListener("submit", (event) => submitCohort(event, form));
  view.replaceChildren(el("h2", { text: "New cohort" }), form);
}

// A seed is sent with the exact digits typed or copied (a JavaScript number rounds past 2^53: another brain, or
// a 422 past 2^63 - 1): kept as its digits here and written into the JSON text as they are by requestJson.
// Anything but plain digits goes as a number, for the API to refuse naming the field.
function exactInteger(text) {
  return /^[0-9]+$/.test(text) ? text.replace(/^0+(?=[0-9])/, "") : Number(text);
}

function requestJson(request) {
  const { seed, ...rest } = request;
  if (typeof seed !== "string") return JSON.stringify(request);
  return JSON.stringify(rest).replace(/^\{/, `{"seed":${seed}${Object.keys(rest).length ? "," : ""}`);
}

function requestFromForm(form) {
  const value = (name) => form.elements[name].value.trim();
  const number = (name) => (value(name) === "" ? null : Number(value(name)));
  const request = { model: value("model"), n_subjects: number("n_subjects"), covariates: {}, sampler: { name: value("sampler") } };
  if (value("name")) request.name = value("name");
  if (value("seed") !== "") request.seed = exactInteger(value("seed"));
  for (const [field] of COVARIATES) {
    request.covariates[field] = form.elements[`${field}.mode`].value === "value"
      ? { value: number(`${field}.value`) }
      : { min: number(`${field}.min`), max: number(`${field}.max`) };
  }
  request.covariates.sex = { female_fraction: number("female_fraction") };
  if (number("steps") !== null) request.sampler.steps = number("steps");
  if (form.elements.guidance && number("guidance") !== null) request.guidance = number("guidance");
  if (form.elements.extrapolate.checked) request.extrapolate = true;
  return request;
}

function showFieldErrors(form, detail) {
  form.querySelectorAll("[data-error-for]").forEach((node) => { node.textContent = ""; });
  const general = [];
  for (const error of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const path = (error.loc || []).filter((part) => part !== "body").map(String);
    let slot = null;
    for (let length = path.length; length > 0 && !slot; length -= 1) {
      slot = form.querySelector(`[data-error-for="${CSS.escape(path.slice(0, length).join("."))}"]`);
    }
    const text = error.msg.replace("set extrapolate to true", "tick 'Allow covariates outside the model's training range'");
    if (slot) slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
    else general.push(`${path.join(".") || "request"}: ${text}`);
  }
  $("#form-error").textContent = general.join("; ");
}

async function submitCohort(event, form) {
  event.preventDefault();
  const button = $("#submit-cohort");
  button.disabled = true;
  const { status, body } = await api("/v1/cohorts", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: requestJson(requestFromForm(form)),
  });
  button.disabled = false;
  if (status === 202) { location.hash = `#/cohorts/${body.id}`; return; }
  showFieldErrors(form, status === 422 ? body.detail : detailText(body));
}

// ---- the cohort list -----------------------------------------------------------------------------------
async function renderList() {
  const view = $("#view");
  const ticket = routeTicket;
  const { status, body } = await api("/v1/cohorts?page_size=50");
  if (superseded(ticket)) return;
  if (status !== 200) { view.replaceChildren(el("p", { class: "error", text: detailText(body) })); return; }
  const open = el("form", { class: "row", id: "open-cohort" },
    el("label", { for: "cohort-id", text: "Open a cohort by id" }), el("input", { id: "cohort-id", required: true }),
    el("button", { type: "submit", class: "secondary", text: "Open" }));
  open.addEventListener("submit", (e) => { e.preventDefault(); location.hash = `#/cohorts/${encodeURIComponent($("#cohort-id").value.trim())}`; });
  const rows = body.cohorts.map((c) => el("tr", { "data-cohort": c.id },
    el("td", {}, el("a", { href: `#/cohorts/${c.id}`, text: c.request.name || c.id.slice(0, 12) })),
    el("td", { class: `status-${c.status}`, text: c.status }),
    el("td", {}, el("progress", { max: c.progress.total, value: c.progress.done }), ` ${c.progress.done}/${c.progress.total}`),
    el("td", { text: new Date(c.created_at).toLocaleString() }),
    el("td", { text: c.request.model })));
  view.replaceChildren(el("h2", { text: "Cohorts" }),
    rows.length ? el("table", { id: "cohort-list" }, el("thead", {}, el("tr", {}, ...["Name", "Status", "Progress", "Created", "Model"].map((h) => el("th", { text: h })))), el("tbody", {}, ...rows))
      : el("p", { text: "No cohorts yet: " }, el("a", { href: "#/new", text: "design one" })),
    el("p", {}), open);
}

// ---- one cohort ----------------------------------------------------------------------------------------
async function linkToken(id) {
  const { status, body } = await api(`/v1/cohorts/${encodeURIComponent(id)}/link-token`, { method: "POST" });
  return status === 200 ? body.token : null;
}

function notFound(id) {
  $("#view").replaceChildren(el("div", { class: "not-found", id: "not-found" },
    el("h2", { text: "Cohort not found" }),
    el("p", { text: `No cohort ${id} belongs to this API key. It may have been deleted, or it belongs to another tenant.` }),
    el("a", { href: "#/cohorts", text: "Back to your cohorts" })));
}

async function renderCohort(id) {
  const view = $("#view");
  const ticket = routeTicket;
  const first = await api(`/v1/cohorts/${encodeURIComponent(id)}`);
  if (superseded(ticket)) return;
  if (first.status === 404) { notFound(id); return; }
  if (first.status !== 200) { view.replaceChildren(el("p", { class: "error", text: detailText(first.body) })); return; }
  let token = await linkToken(id);
  if (superseded(ticket)) return;
  let tokenAt = Date.now();
  const shown = new Set();
  const title = el("h2", { text: first.body.request.name || `Cohort ${id}` });
  const state = el("p", { id: "cohort-status" });
  const bar = el("progress", { id: "cohort-progress", max: 1, value: 0 });
  const counts = el("span", { id: "cohort-counts" });
  const error = el("p", { class: "error", id: "cohort-error" });
  const download = el("a", { id: "download", class: "button", hidden: true, text: "Download BIDS archive (ZIP)" });
  const cancel = el("button", { type: "button", class: "secondary", id: "cancel", text: "Cancel" });
  const remove = el("button", { type: "button", class: "danger", id: "delete", text: "Delete" });
  const strip = el("div", { class: "strip", id: "strip", title: "mid-axial slice of every stored subject" });
  const subjects = el("div", { class: "subjects", id: "subjects" });
  const evidence = el("section", { id: "evidence", hidden: true });
  view.replaceChildren(title, el("p", { class: "range-hint", text: `id ${id} · model ${first.body.request.model}` }),
    state, el("div", { class: "row" }, bar, counts), error, el("div", { class: "actions" }, download, cancel, remove),
    evidence, el("h3", { text: "Previews (neurological: subject's left on the left; window 0-1)" }), strip, subjects);

  async function freshToken() {
    if (Date.now() - tokenAt > 5 * 60 * 1000) { token = await linkToken(id); tokenAt = Date.now(); }
    return token;
  }

  async function showSubjects() {
    const { status, body } = await api(`/v1/cohorts/${encodeURIComponent(id)}/subjects`);
    if (status !== 200) return;
    const t = await freshToken();
    for (const s of body.subjects) {
      if (s.status !== "stored" || shown.has(s.participant_id)) continue;
      shown.add(s.participant_id);
      const base = `/v1/cohorts/${encodeURIComponent(id)}/subjects/${s.participant_id}`;
      strip.append(el("img", { src: `${base}/preview-axial.png?token=${encodeURIComponent(t)}`, alt: `${s.participant_id} mid-axial`, title: s.participant_id }));
      subjects.append(el("figure", { class: "subject", "data-participant": s.participant_id },
        el("img", { src: `${base}/preview.png?token=${encodeURIComponent(t)}`, alt: `${s.participant_id}: axial, coronal and sagittal mid-slices` }),
        el("dl", {},
          el("dt", { text: "participant" }), el("dd", { text: s.participant_id }),
          el("dt", { text: "sex" }), el("dd", { text: s.sex }),
          el("dt", { text: "age" }), el("dd", { text: `${fmt(s.age, 1)} years` }),
          el("dt", { text: "ventricles" }), el("dd", { text: `${fmt(s.ventricular_volume_mm3, 0)} mm³` }),
          el("dt", { text: "brain" }), el("dd", { text: `${fmt(s.brain_volume_mm3, 0)} mm³` }),
          el("dt", { text: "seed" }), el("dd", { text: String(s.seed) }))));
    }
  }

  // Requested against measured volumes, once the cohort has finished (only measured cohorts have a report).
  async function showEvidence() {
    if (!evidence.hidden || (first.body.request.qc || "none") === "none") return;
    const { status, body } = await api(`/v1/cohorts/${encodeURIComponent(id)}/qc`);
    if (status !== 200) return;
    const row = (label, a) => el("tr", {}, el("th", { text: label }), el("td", { text: a.pearson_r === null ? "n/a" : String(a.pearson_r) }),
      el("td", { text: `${fmt(a.mae_mm3, 0)} mm³` }), el("td", { text: `${fmt(a.mape_percent, 1)} %` }));
    evidence.replaceChildren(
      el("h3", { text: `Evidence: measured by ${body.measures.join(", ")} (requested against measured)` }),
      el("p", { id: "qc-acceptance", text: `${body.passed} of ${body.measured} subjects within ${fmt(100 * body.tolerance[0], 0)} % of the request (acceptance ${fmt(100 * body.acceptance_rate, 0)} %)` }),
      el("table", { id: "qc-report" },
        el("tr", {}, el("th", { text: "volume" }), el("th", { text: "Pearson r" }), el("th", { text: "mean abs. error" }), el("th", { text: "mean abs. % error" })),
        row("ventricles", body.ventricular_volume_mm3), row("brain", body.brain_volume_mm3)),
      el("img", { id: "qc-scatter", src: `/v1/cohorts/${encodeURIComponent(id)}/qc.png?token=${encodeURIComponent(await freshToken())}`, alt: "measured against requested volumes, with the tolerance band" }));
    if (body.measures.includes("samseg")) {  // SAMSEG's brain (yellow) and ventricle (red) outlines per subject
      const t = encodeURIComponent(await freshToken());
      evidence.append(el("h4", { text: "SAMSEG outlines: brain (yellow), ventricles (red)" }), el("div", { id: "qc-outlines" },
        ...[...shown].map((pid) => el("img", { src: `/v1/cohorts/${encodeURIComponent(id)}/subjects/${pid}/preview-labels.png?token=${t}`, alt: `${pid}: SAMSEG outlines`, title: pid }))));
    }
    evidence.hidden = false;
  }

  let lastDone = -1;
  async function update(status) {
    state.className = `status-${status.status}`;
    state.textContent = `Status: ${status.status}`;
    bar.max = status.progress.total; bar.value = status.progress.done;
    const percent = status.progress.total ? Math.round((100 * status.progress.done) / status.progress.total) : 0;
    const measuring = status.request.qc === "samseg" ? `, ${status.progress.measured}/${status.progress.total} measured by SAMSEG` : "";
    counts.textContent = ` ${status.progress.done}/${status.progress.total} subjects (${percent} %)${measuring}`;
    error.textContent = status.error || "";
    const final = ["succeeded", "failed", "canceled"].includes(status.status);
    cancel.hidden = final;
    remove.hidden = !final;
    if (status.status === "succeeded") {
      download.href = `/v1/cohorts/${encodeURIComponent(id)}/archive?token=${encodeURIComponent(await freshToken())}`;
      download.setAttribute("download", `cohort-${id}.zip`);
      download.hidden = false;
    }
    if (status.progress.done !== lastDone || final) { lastDone = status.progress.done; await showSubjects(); }
    if (final) await showEvidence();
  }

  cancel.addEventListener("click", async () => {
    const { status, body } = await api(`/v1/cohorts/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    if (status === 200) await update(body); else error.textContent = detailText(body);
  });
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete cohort ${id} and all its files?`)) return;
    const { status, body } = await api(`/v1/cohorts/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (status === 204) location.hash = "#/cohorts"; else error.textContent = detailText(body);
  });

  await update(first.body);
  if (["succeeded", "failed", "canceled"].includes(first.body.status) || !token) return;
  stream = new EventSource(`/v1/cohorts/${encodeURIComponent(id)}/events?token=${encodeURIComponent(token)}`);
  stream.addEventListener("status", (event) => {
    const status = JSON.parse(event.data);
    update(status);
    if (["succeeded", "failed", "canceled"].includes(status.status)) closeStream();
  });
  stream.addEventListener("error", async () => {
    // The stream ends after a final state; on a dropped connection, reopen with a fresh token.
    if (!stream) return;
    closeStream();
    const again = await api(`/v1/cohorts/${encodeURIComponent(id)}`);
    if (again.status === 200 && location.hash === `#/cohorts/${id}`) {
      await update(again.body);
      if (!["succeeded", "failed", "canceled"].includes(again.body.status)) setTimeout(route, 1000);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", () => { if (apiKey()) route(); });
  if (apiKey()) showApp(); else signOut();
});
