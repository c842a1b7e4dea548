"use strict";
// For tests/test_js_preview.py: reads a JSON list of page states from stdin, loads javascript/todo.js on a fresh
// fake page for each, and writes what the page then shows (the K/V line, the factor label, console warnings).
//
// A state: {tab, width, height, todo: {field: value, ...}, hires: {scale, resize_x, resize_y} (txt2img with hires
// fix; absent = off), resize_by: {scale, image: [width, height] or null} (img2img's "Resize by" tab), layout: the
// answer of GET todo/v1/layout (absent: a page without fetch)}.

const fs = require("node:fs");
const {settledPage} = require("./webui_page.js");

async function main() {
    const states = JSON.parse(fs.readFileSync(0, "utf8"));
    const shown = [];
    for (const state of states) {
        const page = await settledPage(state);
        shown.push({line: page.line(state.tab), factor_label: page.factorLabel(state.tab),
            warnings: page.messages.warn, log: page.messages.log, requests: page.requests.length});
    }
    process.stdout.write(JSON.stringify(shown));
}

main();
