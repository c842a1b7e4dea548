"use strict";
// A stand-in for the parts of a WebUI page that javascript/todo.js reads, and a loader that runs the real file in a
// `vm` context against it. Only what todo.js touches is modelled; a selector the stand-in does not know throws, so a
// change in todo.js that reads something new fails here instead of silently reading nothing.
//
// Element ids follow the WebUI: Script.elem_id gives script_<tab>_todo_<field>, InputAccordion adds a hidden
// checkbox "<id>-checkbox" (the enable box and txt2img's hires fix), and javascript/ui.js's get_tab_index and
// currentImg2imgSourceResolution read the img2img resize tabs and the source image.
//
// `fetch` is there only where a test gives the page a layout answer (page.layoutAnswer, or `layout` in a state):
// the server's GET todo/v1/layout (scripts/todo_script.py serve_model_layout) answering LAYOUT_ANSWERS' JSON or
// one of FAILURES. A page without it is a browser or host without fetch, where todo.js shows both U-Net layouts.

const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const TODO_JS = path.join(__dirname, "..", "..", "javascript", "todo.js");

const HOOKS = ["gradioApp", "onAfterUiUpdate", "onUiLoaded", "get_tab_index", "currentImg2imgSourceResolution"];

// The accordion's controls and their defaults, as todo_ext.args.ToDoArgs declares them.
const TODO_SLIDERS = {
    ratio: 0.75, max_depth: 0, deeper_ratio: -1, auto_target_tokens: 4096, start: 0, end: 1, hires_ratio: 0.75,
};
const TODO_CHECKBOXES = {enabled: false, auto: false, hires_only: false};
const TODO_RADIOS = {
    method: [["nearest", "nearest-exact", "avg-pool"], "nearest"],
    hires_mode: [["same", "own", "auto", "off"], "same"],
};
const TODO_FIELDS = [...Object.keys(TODO_CHECKBOXES), ...Object.keys(TODO_SLIDERS), ...Object.keys(TODO_RADIOS)];

// What hosts.layout_of answers for each kind of model (tests/webui/test_optional_integrations.py checks the U-Net
// and unknown answers on the server's side).
const LAYOUT_ANSWERS = {
    sd15: {kind: "unet", levels: [0, 1, 2, 3]},
    sdxl: {kind: "unet", levels: [1, 2]},
    flux: {kind: "dit", family: "Flux"},
    chroma: {kind: "dit", family: "Chroma"},
    lumina: {kind: "dit", family: "Lumina 2 / Z-Image"},
    qwen: {kind: "dit", family: "Qwen-Image"},
    wan: {kind: "dit", family: "Wan"},
    ernie: {kind: "dit", family: "Ernie-Image"},
    anima: {kind: "dit", family: "Anima"},
    sd3: {kind: "dit", family: "SD3"},
    unknown: {kind: "unknown"},
};
// Answers that are no layout: an old server or another host (404), a server error, no connection, a page that
// is not JSON (a proxy's error page), a fetch that throws before it sends (a page's policy refusing it).
const FAILURES = ["404", "500", "network error", "not JSON", "fetch throws"];

class FakeInput {
    constructor(type, value, checked) {
        this.type = type;
        this.value = value;
        this.checked = checked;
    }
}

class FakeElement {
    constructor(id) {
        this.id = id;
        this.title = "";
        this.textContent = "";
        this.style = {};
        this.dataset = {};
        this.inputs = [];
        this.children = {}; // class name -> element, for ".prose" and ".todo-kv-line"
        this.selectedTab = 0; // for tab groups, read by the stand-in of get_tab_index
    }

    querySelector(selector) {
        if (selector.startsWith(".")) {
            return this.children[selector.slice(1)] || null;
        }
        throw new Error("the fake page does not model the selector " + JSON.stringify(selector));
    }
}

class FakeApp {
    constructor() {
        this.elements = new Map();
        this.listeners = {};
    }

    add(id) {
        const element = new FakeElement(id);
        this.elements.set(id, element);
        return element;
    }

    getElementById(id) {
        return this.elements.get(id) || null;
    }

    querySelector(selector) {
        const match = /^#([\w-]+) (input\[type=(number|checkbox)\]|input:checked|input|\.[\w-]+)$/.exec(selector);
        if (!match) {
            throw new Error("the fake page does not model the selector " + JSON.stringify(selector));
        }
        const element = this.getElementById(match[1]);
        if (!element) {
            return null;
        }
        if (match[3]) {
            return element.inputs.find((input) => input.type === match[3]) || null;
        }
        if (match[2] === "input:checked") {
            return element.inputs.find((input) => input.checked) || null;
        }
        if (match[2] === "input") {
            return element.inputs[0] || null;
        }
        return element.querySelector(match[2]);
    }

    addEventListener(type, listener) {
        (this.listeners[type] = this.listeners[type] || []).push(listener);
    }
}

// setTimeout for the vm context: callbacks run only when a test advances the clock.
class FakeClock {
    constructor() {
        this.now = 0;
        this.pending = [];
        this.setTimeout = (callback, delay) => {
            this.pending.push({at: this.now + (delay || 0), callback});
        };
    }

    advance(milliseconds) {
        const until = this.now + milliseconds;
        for (;;) {
            const due = this.pending.filter((timer) => timer.at <= until).sort((a, b) => a.at - b.at)[0];
            if (!due) {
                break;
            }
            this.pending.splice(this.pending.indexOf(due), 1);
            this.now = due.at;
            due.callback();
        }
        this.now = until;
    }
}

class WebUIPage {
    constructor() {
        this.app = new FakeApp();
        this.clock = new FakeClock();
        this.messages = {log: [], warn: [], error: []};
        this.afterUiUpdateCallbacks = [];
        this.uiLoadedCallbacks = [];
        this.sourceImage = null; // [naturalWidth, naturalHeight] of img2img's image, or null when none is loaded
        this.context = null; // the page's globals once loaded: a test may remove or replace a hook afterwards
        this.layoutAnswer = undefined; // a key of LAYOUT_ANSWERS, a layout object, one of FAILURES; undefined: no fetch
        this.requests = []; // [clock time, url, options] of each fetch
        for (const tab of ["txt2img", "img2img"]) {
            this.slider(tab + "_width", 512);
            this.slider(tab + "_height", 512);
            this.addToDoAccordion(tab);
        }
        this.inputAccordion("txt2img_hr", false);
        this.slider("txt2img_hr_scale", 2);
        this.slider("txt2img_hr_resize_x", 0);
        this.slider("txt2img_hr_resize_y", 0);
        this.app.add("img2img_tabs_resize");
        // gradio shows the selected tab's panel as display: block and hides the others.
        this.app.add("img2img_tab_resize_to").style.display = "block";
        this.app.add("img2img_tab_resize_by").style.display = "none";
        this.slider("img2img_scale", 1);
    }

    // Forge Classic's modules/ui.py makes the img2img resize tabs without an elem_id on their group.
    withoutResizeTabGroupId() {
        this.app.elements.delete("img2img_tabs_resize");
        return this;
    }

    slider(id, value) {
        // gradio's slider: a number box and a range input holding the same value.
        this.app.add(id).inputs.push(new FakeInput("number", String(value), false),
            new FakeInput("range", String(value), false));
    }

    checkbox(id, checked) {
        this.app.add(id).inputs.push(new FakeInput("checkbox", "on", checked));
    }

    inputAccordion(id, checked) {
        this.app.add(id);
        this.checkbox(id + "-checkbox", checked);
    }

    radio(id, choices, value) {
        const element = this.app.add(id);
        choices.forEach((choice) => element.inputs.push(new FakeInput("radio", choice, choice === value)));
    }

    // The quicksettings' checkpoint dropdown: gradio's Dropdown shows its value in a text input.
    checkpointDropdown(value) {
        this.app.add("setting_sd_model_checkpoint").inputs.push(new FakeInput("text", value, false));
    }

    chooseCheckpoint(value) {
        this.app.getElementById("setting_sd_model_checkpoint").inputs[0].value = value;
    }

    html(id, childClass) {
        const child = new FakeElement("");
        this.app.add(id).children[childClass] = child;
        return child;
    }

    addToDoAccordion(tab) {
        const prefix = todoId(tab, "");
        this.inputAccordion(prefix + "enabled", TODO_CHECKBOXES.enabled);
        for (const [field, value] of Object.entries(TODO_SLIDERS)) {
            this.slider(prefix + field, value);
        }
        for (const field of ["auto", "hires_only"]) {
            this.checkbox(prefix + field, TODO_CHECKBOXES[field]);
        }
        for (const [field, [choices, value]] of Object.entries(TODO_RADIOS)) {
            this.radio(prefix + field, choices, value);
        }
        this.html(prefix + "factor", "prose").textContent = "0.75 = 2x per side (25% of K/V kept)";
        const hints = Object.fromEntries(TODO_FIELDS.map((field) => [prefix + field, "hint: " + tab + " " + field]));
        this.html(prefix + "kv_line", "todo-kv-line").dataset.todoHints = JSON.stringify(hints);
    }

    // Sets a control's value the way a paste or "Send to" does: no input or change event.
    set(id, value) {
        const element = this.app.getElementById(id);
        if (!element || !element.inputs.length) {
            throw new Error("no control " + id + " on the fake page");
        }
        const kind = element.inputs[0].type;
        if (kind === "number") {
            element.inputs.forEach((input) => {
                input.value = String(value);
            });
        } else if (kind === "checkbox") {
            element.inputs[0].checked = value;
        } else {
            if (!element.inputs.some((input) => input.value === value)) {
                throw new Error(id + " has no choice " + value);
            }
            element.inputs.forEach((input) => {
                input.checked = input.value === value;
            });
        }
    }

    setToDo(tab, field, value) {
        this.set(todoId(tab, field === "enabled" ? "enabled-checkbox" : field), value);
    }

    // A page state as the pytest driver hands it over (see preview_driver.js).
    configure(state) {
        const tab = state.tab;
        this.set(tab + "_width", state.width);
        this.set(tab + "_height", state.height);
        Object.entries(state.todo || {}).forEach(([field, value]) => this.setToDo(tab, field, value));
        if (state.hires) {
            this.set("txt2img_hr-checkbox", true);
            this.set("txt2img_hr_scale", state.hires.scale === undefined ? 2 : state.hires.scale);
            this.set("txt2img_hr_resize_x", state.hires.resize_x || 0);
            this.set("txt2img_hr_resize_y", state.hires.resize_y || 0);
        }
        if (state.layout !== undefined) {
            this.layoutAnswer = state.layout;
        }
        if (state.resize_by) {
            const group = this.app.getElementById("img2img_tabs_resize");
            if (group) {
                group.selectedTab = 1;
            }
            this.app.getElementById("img2img_tab_resize_to").style.display = "none";
            this.app.getElementById("img2img_tab_resize_by").style.display = "block";
            this.set("img2img_scale", state.resize_by.scale);
            this.sourceImage = state.resize_by.image;
        }
    }

    // Runs javascript/todo.js as the WebUI's page would, with the hooks named in `without` left undefined.
    load({without = []} = {}) {
        const app = this.app;
        const hooks = {
            gradioApp: () => app,
            onAfterUiUpdate: (callback) => this.afterUiUpdateCallbacks.push(callback),
            onUiLoaded: (callback) => this.uiLoadedCallbacks.push(callback),
            // javascript/ui.js reads the selected button of the tab group; like it, this throws when the group is gone.
            get_tab_index: (tabId) => app.getElementById(tabId).selectedTab,
            currentImg2imgSourceResolution: (width, height, scaleBy) =>
                this.sourceImage ? [this.sourceImage[0], this.sourceImage[1], scaleBy] : [0, 0, scaleBy],
        };
        const context = {setTimeout: this.clock.setTimeout, console: this.recordingConsole()};
        if (this.layoutAnswer !== undefined) {
            context.fetch = (url, options) => this.fetch(url, options);
        }
        this.context = context;
        for (const name of HOOKS) {
            if (!without.includes(name)) {
                context[name] = hooks[name];
            }
        }
        vm.createContext(context);
        vm.runInContext(fs.readFileSync(TODO_JS, "utf8"), context, {filename: TODO_JS});
        return this;
    }

    // The server's answer to a fetch, as the browser gives it: a promise of a Response, rejected without a connection.
    fetch(url, options) {
        this.requests.push([this.clock.now, url, options]);
        const answer = typeof this.layoutAnswer === "string" && this.layoutAnswer in LAYOUT_ANSWERS ?
            LAYOUT_ANSWERS[this.layoutAnswer] : this.layoutAnswer;
        if (answer === "fetch throws") {
            throw new TypeError("Failed to execute 'fetch' on 'Window': Refused by the page's policy");
        }
        if (answer === "network error") {
            return Promise.reject(new TypeError("Failed to fetch"));
        }
        const status = answer === "404" ? 404 : answer === "500" ? 500 : 200;
        const body = status === 404 ? {detail: "Not Found"} : status === 500 ? {error: "Internal Server Error"} :
            answer;
        return Promise.resolve({
            ok: status === 200,
            status,
            json: () => answer === "not JSON" ?
                Promise.reject(new SyntaxError("Unexpected token '<', \"<html>\" is not valid JSON")) :
                Promise.resolve(JSON.parse(JSON.stringify(body))),
        });
    }

    // Lets the answers of fetches already made arrive (promise callbacks run before the next macrotask).
    async settle() {
        for (let round = 0; round < 3; round++) {
            await new Promise((resolve) => setImmediate(resolve));
        }
        return this;
    }

    recordingConsole() {
        const record = (level) => (...args) => this.messages[level].push(args.map(String).join(" "));
        return {log: record("log"), warn: record("warn"), error: record("error")};
    }

    uiLoaded() {
        this.uiLoadedCallbacks.forEach((callback) => callback());
    }

    uiUpdated() {
        this.afterUiUpdateCallbacks.forEach((callback) => callback());
    }

    dispatch(type) {
        (this.app.listeners[type] || []).forEach((listener) => listener({type}));
    }

    line(tab) {
        return this.app.querySelector("#" + todoId(tab, "kv_line") + " .todo-kv-line").textContent;
    }

    factorLabel(tab) {
        return this.app.getElementById(todoId(tab, "factor")).children.prose.textContent;
    }
}

function todoId(tab, field) {
    return "script_" + tab + "_todo_" + field;
}

// A page with todo.js loaded, its UI loaded and one update run, as after the WebUI's first render.
function loadedPage(state) {
    const page = new WebUIPage();
    if (state) {
        page.configure(state);
    }
    page.load();
    page.uiLoaded();
    page.uiUpdated();
    return page;
}

// loadedPage, after the layout's answer has arrived.
async function settledPage(state) {
    return loadedPage(state).settle();
}

module.exports = {FAILURES, LAYOUT_ANSWERS, WebUIPage, loadedPage, settledPage, todoId};
