"use strict";
// javascript/todo.js on a fake WebUI page (webui_page.js): the K/V line and the factor label, paste and "Send to",
// the guards for pages it was not written for, and the line for the model the server says is loaded (GET
// todo/v1/layout: one U-Net layout, a DiT's image tokens, or both U-Net layouts without an answer). Expected lines
// are worked out by hand in the comments (latent = pixels // 8, each attention level halves a side rounding up, a
// DiT's tokens per side = ceil(latent / 2), K/V side = ceil(side / factor)); tests/test_js_preview.py compares a
// wider table with the Python engine.

const assert = require("node:assert/strict");
const {describe, test} = require("node:test");
const {FAILURES, WebUIPage, loadedPage, settledPage, todoId} = require("./webui_page.js");

function passes(page, tab = "txt2img") {
    const [header, first, hires] = page.line(tab).split("\n");
    assert.equal(header, "K/V tokens of self-attention at depth 0 (d1 = depth 1), without → with ToDo:");
    return {first, hires};
}

function firstPass(width, height, todo, tab = "txt2img") {
    return passes(loadedPage({tab, width, height, todo: {enabled: true, ...todo}}), tab).first;
}

function hiresPass(width, height, hires, todo) {
    return passes(loadedPage({tab: "txt2img", width, height, hires, todo: {enabled: true, ...todo}})).hires;
}

describe("K/V line", () => {
    test("the paper's ratios give 2x, 3x and 4x per side", () => {
        // 1024 px: latent 128, SDXL's depth 0 at 64; 2x keeps 64 and 32 per side.
        assert.equal(firstPass(1024, 1024, {ratio: 0.75}),
            "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1) · SDXL 4096 → 1024 (2x, latent/2)");
        // 0.89: 1/sqrt(0.11) = 3.015, snapped to 3; 1536 px: latent 192 -> 64, SDXL 96 -> 32.
        assert.equal(firstPass(1536, 1536, {ratio: 0.89}),
            "First pass 1536×1536: SD1/SD2 36864 → 4096 (3x, latent/1) · SDXL 9216 → 1024 (3x, latent/2)");
        // 2048 px: latent 256 -> 64, SDXL 128 -> 32.
        assert.equal(firstPass(2048, 2048, {ratio: 0.9375}),
            "First pass 2048×2048: SD1/SD2 65536 → 4096 (4x, latent/1) · SDXL 16384 → 1024 (4x, latent/2)");
    });

    test("a factor within 2% of a whole number snaps to it, others stay fractional", () => {
        // 0.7575: 1/sqrt(0.2425) = 2.031, 1.5% off 2.
        assert.match(firstPass(1024, 1024, {ratio: 0.7575}), /SD1\/SD2 16384 → 4096 \(2x, latent\/1\)/);
        // 0.76: 2.041, 2.02% off 2: ceil(128 / 2.041) = 63, ceil(64 / 2.041) = 32.
        assert.equal(firstPass(1024, 1024, {ratio: 0.76}),
            "First pass 1024×1024: SD1/SD2 16384 → 3969 (2.04x, latent/1) · SDXL 4096 → 1024 (2.04x, latent/2)");
        // 0.5: sqrt(2) = 1.414: ceil(64 / 1.414) = 46, ceil(32 / 1.414) = 23.
        assert.equal(firstPass(512, 512, {ratio: 0.5}),
            "First pass 512×512: SD1/SD2 4096 → 2116 (1.41x, latent/1) · SDXL 1024 → 529 (1.41x, latent/2)");
    });

    test("Auto keeps about the target, never upsamples and stops at 8x", () => {
        // 512 px: 4096 and 1024 tokens, at or under the target of 4096: 1x.
        assert.equal(firstPass(512, 512, {auto: true}),
            "First pass 512×512: SD1/SD2 4096 → 4096 (1x, latent/1) · SDXL 1024 → 1024 (1x, latent/2)");
        // 768 px: sqrt(9216 / 4096) = 1.5 keeps 64 of 96 per side; SDXL's 2304 tokens stay.
        assert.equal(firstPass(768, 768, {auto: true}),
            "First pass 768×768: SD1/SD2 9216 → 4096 (1.50x, latent/1) · SDXL 2304 → 2304 (1x, latent/2)");
        // 6144 px: latent 768, sqrt(589824 / 4096) = 12, capped at 8 -> 96 per side; SDXL 384 -> sqrt(36) = 6.
        assert.equal(firstPass(6144, 6144, {auto: true}),
            "First pass 6144×6144: SD1/SD2 589824 → 9216 (8x, latent/1) · SDXL 147456 → 4096 (6x, latent/2)");
        // Target 1024 at 1024 px: sqrt(16384 / 1024) = 4.
        assert.match(firstPass(1024, 1024, {auto: true, auto_target_tokens: 1024}), /16384 → 1024 \(4x, latent\/1\)/);
    });

    test("Max depth 1 adds depth 1; Deeper ratio -1 follows the ratio, a set one pins depth 1", () => {
        assert.equal(firstPass(1024, 1024, {max_depth: 1}),
            "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1), d1 4096 → 1024 (2x, latent/2) " +
            "· SDXL 4096 → 1024 (2x, latent/2), d1 1024 → 256 (2x, latent/4)");
        assert.equal(firstPass(1024, 1024, {max_depth: 1, deeper_ratio: 0.9375}),
            "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1), d1 4096 → 256 (4x, latent/2) " +
            "· SDXL 4096 → 1024 (2x, latent/2), d1 1024 → 64 (4x, latent/4)");
        // Deeper ratio 0 leaves depth 1 exact.
        assert.match(firstPass(1024, 1024, {max_depth: 1, deeper_ratio: 0}),
            /SD1\/SD2 16384 → 4096 \(2x, latent\/1\), d1 4096 → 4096 \(1x, latent\/2\)/);
        // Max depth 0: a deeper ratio has nothing to act on and no d1 is shown.
        assert.equal(firstPass(1024, 1024, {max_depth: 0, deeper_ratio: 0.9375}),
            "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1) · SDXL 4096 → 1024 (2x, latent/2)");
        // Ratio 0 with a deeper ratio thins depth 1 only; ratio 0 alone is no ToDo.
        assert.match(firstPass(1024, 1024, {ratio: 0, max_depth: 1, deeper_ratio: 0.75}),
            /SD1\/SD2 16384 → 16384 \(1x, latent\/1\), d1 4096 → 1024 \(2x, latent\/2\)/);
        assert.match(firstPass(1024, 1024, {ratio: 0, max_depth: 1}), /: no ToDo, SD1\/SD2 16384 · SDXL 4096$/);
    });

    test("under Auto, depth 1 takes Auto's factor at -1 and the deeper ratio's when set", () => {
        // 2048 px: Auto gives SD1 4x (65536 tokens), SDXL 2x (16384); depth 1 follows it.
        assert.equal(firstPass(2048, 2048, {auto: true, max_depth: 1}),
            "First pass 2048×2048: SD1/SD2 65536 → 4096 (4x, latent/1), d1 16384 → 1024 (4x, latent/2) " +
            "· SDXL 16384 → 4096 (2x, latent/2), d1 4096 → 1024 (2x, latent/4)");
        // Deeper 0.89 = 3x at depth 1 on both: ceil(128 / 3) = 43, ceil(64 / 3) = 22.
        assert.equal(firstPass(2048, 2048, {auto: true, max_depth: 1, deeper_ratio: 0.89}),
            "First pass 2048×2048: SD1/SD2 65536 → 4096 (4x, latent/1), d1 16384 → 1849 (3x, latent/2) " +
            "· SDXL 16384 → 4096 (2x, latent/2), d1 4096 → 484 (3x, latent/4)");
    });

    test("odd sizes: each level halves a side rounding up", () => {
        // 1000 px: latent 125, then 63, then 32, then 16.
        assert.equal(firstPass(1000, 1000, {max_depth: 1}),
            "First pass 1000×1000: SD1/SD2 15625 → 3969 (2x, latent/1), d1 3969 → 1024 (2x, latent/2) " +
            "· SDXL 3969 → 1024 (2x, latent/2), d1 1024 → 256 (2x, latent/4)");
        // 1920x1080: latent 240x135, then 120x68, 60x34, 30x17.
        assert.equal(firstPass(1920, 1080, {max_depth: 1}),
            "First pass 1920×1080: SD1/SD2 32400 → 8160 (2x, latent/1), d1 8160 → 2040 (2x, latent/2) " +
            "· SDXL 8160 → 2040 (2x, latent/2), d1 2040 → 510 (2x, latent/4)");
    });

    test("ToDo off, or Hires pass only, shows the tokens without ToDo", () => {
        const page = loadedPage({tab: "txt2img", width: 512, height: 512, hires: {scale: 2}, todo: {enabled: false}});
        assert.deepEqual(passes(page), {
            first: "First pass 512×512: no ToDo, SD1/SD2 4096 · SDXL 1024",
            hires: "Hires pass 1024×1024: no ToDo, SD1/SD2 16384 · SDXL 4096",
        });
        assert.deepEqual(passes(loadedPage({tab: "txt2img", width: 512, height: 512, hires: {scale: 2},
            todo: {enabled: true, hires_only: true}})), {
            first: "First pass 512×512: no ToDo, SD1/SD2 4096 · SDXL 1024",
            hires: "Hires pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1) · SDXL 4096 → 1024 (2x, latent/2)",
        });
    });

    test("hires fix: Upscale by, and Resize to with one side 0 following the aspect", () => {
        assert.equal(hiresPass(512, 512, {scale: 2}, {}),
            "Hires pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1) · SDXL 4096 → 1024 (2x, latent/2)");
        // 512x768 to width 1024: height 1024 * 768 / 512 = 1536; latent 128x192.
        const resized =
            "Hires pass 1024×1536: SD1/SD2 24576 → 6144 (2x, latent/1) · SDXL 6144 → 1536 (2x, latent/2)";
        assert.equal(hiresPass(512, 768, {resize_x: 1024, resize_y: 0}, {}), resized);
        assert.equal(hiresPass(512, 768, {resize_x: 0, resize_y: 1536}, {}), resized);
        // A size that is no multiple of 8: 512x768 times 1.33 is 680.96x1021.44, truncated to 680x1021; the latent
        // is 1021 // 8 = 127 by 680 // 8 = 85 (not 128 by 85), then 64 by 43.
        assert.equal(hiresPass(512, 768, {scale: 1.33}, {}),
            "Hires pass 680×1021: SD1/SD2 10795 → 2752 (2x, latent/1) · SDXL 2752 → 704 (2x, latent/2)");
        // Both sides set: the target itself.
        assert.match(hiresPass(512, 512, {resize_x: 1920, resize_y: 1080}, {}),
            /^Hires pass 1920×1080: SD1\/SD2 32400 → 8160 \(2x, latent\/1\)/);
        assert.equal(passes(loadedPage({tab: "txt2img", width: 512, height: 512, todo: {enabled: true}})).hires,
            undefined, "no hires line without hires fix");
    });

    test("Hires pass same, own, auto and off", () => {
        const first = "First pass 512×512: SD1/SD2 4096 → 1024 (2x, latent/1) · SDXL 1024 → 256 (2x, latent/2)";
        const hiresFor = (todo) => {
            const shown = passes(loadedPage({tab: "txt2img", width: 512, height: 512, hires: {scale: 4},
                todo: {enabled: true, ...todo}}));
            assert.equal(shown.first, first);
            return shown.hires;
        };
        // 2048 px: latent 256, SDXL 128.
        assert.equal(hiresFor({hires_mode: "same"}),
            "Hires pass 2048×2048: SD1/SD2 65536 → 16384 (2x, latent/1) · SDXL 16384 → 4096 (2x, latent/2)");
        assert.equal(hiresFor({hires_mode: "own", hires_ratio: 0.9375}),
            "Hires pass 2048×2048: SD1/SD2 65536 → 4096 (4x, latent/1) · SDXL 16384 → 1024 (4x, latent/2)");
        assert.equal(hiresFor({hires_mode: "auto"}),
            "Hires pass 2048×2048: SD1/SD2 65536 → 4096 (4x, latent/1) · SDXL 16384 → 4096 (2x, latent/2)");
        assert.equal(hiresFor({hires_mode: "off"}), "Hires pass 2048×2048: no ToDo, SD1/SD2 65536 · SDXL 16384");
        // "own" uses its ratio even when the first pass is on Auto.
        const ownAfterAuto = passes(loadedPage({tab: "txt2img", width: 512, height: 512, hires: {scale: 4},
            todo: {enabled: true, auto: true, hires_mode: "own", hires_ratio: 0.75}}));
        assert.match(ownAfterAuto.first, /SD1\/SD2 4096 → 4096 \(1x, latent\/1\)/);
        assert.match(ownAfterAuto.hires, /SD1\/SD2 65536 → 16384 \(2x, latent\/1\)/);
    });

    test("img2img: Resize by uses the source image times Scale; no image, no size", () => {
        const resizeBy = (image) => passes(loadedPage({tab: "img2img", width: 512, height: 512,
            resize_by: {scale: 2, image}, hires: {scale: 2}, todo: {enabled: true}}), "img2img");
        // 768x512 times 2: latent 192x128.
        assert.deepEqual(resizeBy([768, 512]), {
            first: "First pass 1536×1024: SD1/SD2 24576 → 6144 (2x, latent/1) · SDXL 6144 → 1536 (2x, latent/2)",
            hires: undefined,
        });
        assert.deepEqual(resizeBy(null), {first: "First pass: no image selected", hires: undefined});
        // No multiple of 8: 911x512 times 1.5 is 1366.5x768, truncated to 1366x768, a 170x96 latent (not 171x96).
        assert.equal(passes(loadedPage({tab: "img2img", width: 512, height: 512,
            resize_by: {scale: 1.5, image: [911, 512]}, todo: {enabled: true}}), "img2img").first,
            "First pass 1366×768: SD1/SD2 16320 → 4080 (2x, latent/1) · SDXL 4080 → 1032 (2x, latent/2)");
        // The "Resize to" tab: the width and height sliders.
        assert.match(firstPass(768, 512, {}, "img2img"), /^First pass 768×512: SD1\/SD2 6144 → 1536/);
    });

    test("the factor label shows the per-side factor and the share of K/V kept", () => {
        const label = (ratio) => loadedPage({tab: "txt2img", width: 512, height: 512, todo: {ratio}})
            .factorLabel("txt2img");
        assert.equal(label(0.75), "0.75 = 2x per side (25% of K/V kept)");
        assert.equal(label(0.89), "0.89 = 3x per side (11% of K/V kept)");
        assert.equal(label(0.9375), "0.9375 = 4x per side (6.25% of K/V kept)");
        assert.equal(label(0.5), "0.5 = 1.41x per side (50% of K/V kept)");
        assert.equal(label(0), "0 = off");
        // Exactly halfway at the third digit rounds to the even digit, as Python's ".3g" in args.factor_label does.
        assert.equal(label(0.6875), "0.6875 = 1.79x per side (31.2% of K/V kept)");
        assert.equal(label(0.0075), "0.0075 = 1x per side (99.2% of K/V kept)");
        assert.equal(label(0.0025), "0.0025 = 1x per side (99.8% of K/V kept)");
    });
});

describe("paste and Send to", () => {
    test("a click looks again after 300 ms and 1.5 s, when the server's values have arrived", () => {
        const page = loadedPage({tab: "txt2img", width: 512, height: 512, todo: {enabled: true}});
        const before = page.line("txt2img");
        page.dispatch("click");
        // The values arrive without input events, as a paste sets them.
        page.setToDo("txt2img", "ratio", 0.9375);
        page.clock.advance(299);
        assert.equal(page.line("txt2img"), before);
        page.clock.advance(1);
        assert.match(passes(page).first, /SD1\/SD2 4096 → 256 \(4x, latent\/1\)/);
        assert.equal(page.factorLabel("txt2img"), "0.9375 = 4x per side (6.25% of K/V kept)");
        // A slower answer: parameters without ToDo keys turn ToDo off.
        page.clock.advance(700);
        page.setToDo("txt2img", "enabled", false);
        page.clock.advance(499);
        assert.match(passes(page).first, /4x/);
        page.clock.advance(1);
        assert.equal(passes(page).first, "First pass 512×512: no ToDo, SD1/SD2 4096 · SDXL 1024");
        assert.equal(page.clock.pending.length, 0);
    });

    test("Send to img2img: the img2img line follows its own controls", () => {
        const page = loadedPage();
        page.dispatch("click");
        page.setToDo("img2img", "enabled", true);
        page.setToDo("img2img", "ratio", 0.89);
        page.set("img2img_width", 768);
        page.set("img2img_height", 768);
        page.clock.advance(300);
        assert.equal(passes(page, "img2img").first,
            "First pass 768×768: SD1/SD2 9216 → 1024 (3x, latent/1) · SDXL 2304 → 256 (3x, latent/2)");
        assert.match(passes(page, "txt2img").first, /no ToDo/);
    });

    test("input and change events update at once", () => {
        const page = loadedPage({tab: "txt2img", width: 512, height: 512, todo: {enabled: true}});
        page.setToDo("txt2img", "ratio", 0.9375);
        page.dispatch("input");
        assert.match(passes(page).first, /\(4x, latent\/1\)/);
        page.setToDo("txt2img", "ratio", 0.89);
        page.dispatch("change");
        assert.match(passes(page).first, /\(3x, latent\/1\)/);
    });

    test("hints go to each control and its InputAccordion checkbox, once", () => {
        const page = loadedPage();
        const title = (id) => page.app.getElementById(id).title;
        for (const tab of ["txt2img", "img2img"]) {
            assert.equal(title(todoId(tab, "ratio")), "hint: " + tab + " ratio");
            assert.equal(title(todoId(tab, "hires_mode")), "hint: " + tab + " hires_mode");
            assert.equal(title(todoId(tab, "enabled")), "hint: " + tab + " enabled");
            assert.equal(title(todoId(tab, "enabled-checkbox")), "hint: " + tab + " enabled");
            assert.equal(title(todoId(tab, "auto")), "hint: " + tab + " auto");
        }
        // Applied once: later updates neither overwrite a title nor read the hints again.
        page.app.getElementById(todoId("txt2img", "ratio")).title = "changed by the page";
        page.app.querySelector("#" + todoId("txt2img", "kv_line") + " .todo-kv-line").dataset.todoHints = "not JSON";
        page.uiUpdated();
        page.dispatch("input");
        assert.equal(title(todoId("txt2img", "ratio")), "changed by the page");
        assert.deepEqual(page.messages.warn, []);
    });
});

describe("pages todo.js was not written for", () => {
    for (const hook of ["gradioApp", "onAfterUiUpdate", "onUiLoaded"]) {
        test("without " + hook + ": one warning, nothing registered, nothing thrown", () => {
            const page = new WebUIPage();
            assert.doesNotThrow(() => page.load({without: [hook]}));
            assert.equal(page.messages.warn.length, 1);
            assert.match(page.messages.warn[0], /^\[ToDo\] K\/V line and hints off/);
            assert.equal(page.afterUiUpdateCallbacks.length + page.uiLoadedCallbacks.length, 0);
            assert.deepEqual(page.app.listeners, {});
        });
    }

    test("a full page loads without a warning", () => {
        const page = loadedPage();
        assert.deepEqual(page.messages, {log: [], warn: [], error: []});
        assert.deepEqual(Object.keys(page.app.listeners).sort(), ["change", "click", "input"]);
        // The line's text holds one line per pass; pre-line shows them as lines.
        assert.equal(page.app.querySelector("#" + todoId("txt2img", "kv_line") + " .todo-kv-line").style.whiteSpace,
            "pre-line");
    });

    test("Forge Classic's resize tabs (their group has no id): the selected panel tells Resize by from Resize to", () => {
        const classic = (state) => {
            const page = new WebUIPage().withoutResizeTabGroupId();
            page.configure({tab: "img2img", width: 768, height: 512, todo: {enabled: true}, ...state});
            page.load();
            page.uiUpdated();
            return passes(page, "img2img").first;
        };
        assert.match(classic({resize_by: {scale: 2, image: [512, 512]}}), /^First pass 1024×1024: /);
        assert.match(classic({}), /^First pass 768×512: /);
    });

    test("without get_tab_index or currentImg2imgSourceResolution the line still updates", () => {
        const page = new WebUIPage();
        page.configure({tab: "img2img", width: 768, height: 512, resize_by: {scale: 2, image: [512, 512]},
            todo: {enabled: true}});
        page.load({without: ["get_tab_index"]});
        page.uiUpdated();
        // Without ui.js's tab helper the "Resize to" sliders are the best guess.
        assert.match(passes(page, "img2img").first, /^First pass 768×512: /);
        delete page.context.currentImg2imgSourceResolution;
        page.context.get_tab_index = () => 1;
        page.uiUpdated();
        assert.equal(passes(page, "img2img").first, "First pass: no image selected");
        assert.deepEqual(page.messages.warn, []);
    });

    test("a control missing from the page: its default stands in", () => {
        const page = new WebUIPage();
        page.configure({tab: "txt2img", width: 1024, height: 1024, todo: {enabled: true, ratio: 0.9375}});
        page.app.elements.delete(todoId("txt2img", "ratio"));
        page.load();
        page.uiUpdated();
        assert.match(passes(page).first, /SD1\/SD2 16384 → 4096 \(2x, latent\/1\)/);
        assert.deepEqual(page.messages.warn, []);
    });

    const failures = {
        "a helper that throws (ui.js's get_tab_index on a changed tab group)": (page) => {
            page.context.get_tab_index = () => {
                throw new TypeError("Cannot read properties of null (reading 'querySelectorAll')");
            };
        },
        "the app root gone (gradioApp() returns null)": (page) => {
            page.context.gradioApp = () => null;
        },
    };
    for (const [name, breakPage] of Object.entries(failures)) {
        test(name + " mid-update: the line stops with one warning, nothing thrown", () => {
            const page = loadedPage({tab: "txt2img", width: 512, height: 512, todo: {enabled: true}});
            const lineBefore = page.line("txt2img");
            const restore = {...page.context};
            breakPage(page);
            assert.doesNotThrow(() => page.uiUpdated());
            assert.equal(page.messages.warn.length, 1);
            assert.match(page.messages.warn[0], /^\[ToDo\] K\/V line and hints off on this page \(.*Error/);
            // Off for good: even with the page whole again, no update, no second warning.
            Object.assign(page.context, restore);
            page.setToDo("txt2img", "ratio", 0.9375);
            assert.doesNotThrow(() => {
                page.uiUpdated();
                page.dispatch("input");
                page.dispatch("change");
                page.dispatch("click");
                page.clock.advance(2000);
            });
            assert.equal(page.line("txt2img"), lineBefore);
            assert.equal(page.messages.warn.length, 1);
            assert.deepEqual(page.messages.error, []);
        });
    }
});

describe("the loaded model's layout (GET todo/v1/layout)", () => {
    const DIT_HEADER =
        "Preview of the K/V tokens of attention, without → with ToDo (in the middle half of the blocks):";

    async function shown(layout, state) {
        const page = await settledPage({tab: "txt2img", width: 1024, height: 1024, layout, ...state,
            todo: {enabled: true, ...(state && state.todo)}});
        const [header, first, hires] = page.line(state && state.tab || "txt2img").split("\n");
        return {header, first, hires, page};
    }

    test("SD1.x or SD2.x loaded: only the SD1/SD2 layout, with today's arithmetic", async () => {
        const {header, first, hires, page} = await shown("sd15", {hires: {scale: 2}, todo: {max_depth: 1}});
        assert.equal(header, "K/V tokens of self-attention at depth 0 (d1 = depth 1), without → with ToDo:");
        assert.equal(first, "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1), d1 4096 → 1024 (2x, latent/2)");
        assert.equal(hires,
            "Hires pass 2048×2048: SD1/SD2 65536 → 16384 (2x, latent/1), d1 16384 → 4096 (2x, latent/2)");
        assert.deepEqual(page.messages, {log: [], warn: [], error: []});
        // One request, on load, to the route next to the page (as the WebUI's ./internal/progress).
        assert.deepEqual(page.requests.map(([at, url]) => [at, url]), [[0, "./todo/v1/layout"]]);
        assert.equal((page.requests[0][2] || {}).method || "GET", "GET");
    });

    test("SDXL loaded: only the SDXL layout", async () => {
        const {first} = await shown("sdxl", {todo: {max_depth: 1, deeper_ratio: 0.9375}});
        assert.equal(first, "First pass 1024×1024: SDXL 4096 → 1024 (2x, latent/2), d1 1024 → 64 (4x, latent/4)");
        assert.equal((await shown("sdxl", {todo: {enabled: false}})).first, "First pass 1024×1024: no ToDo, SDXL 4096");
    });

    test("a DiT loaded: its image tokens in patches of 2, K/V ceil(side / factor), the text kept", async () => {
        // 1024 px: latent 128, 64x64 tokens; 2x keeps 32 per side.
        const flux = await shown("flux", {hires: {scale: 1.5}});
        assert.equal(flux.header, DIT_HEADER);
        assert.equal(flux.first,
            "First pass 1024×1024: Flux image tokens 4096 (64x64) → 1024 (32x32, 2x) + the prompt's text tokens kept");
        // 1536 px: latent 192, 96 per side.
        assert.equal(flux.hires,
            "Hires pass 1536×1536: Flux image tokens 9216 (96x96) → 2304 (48x48, 2x) + the prompt's text tokens kept");
        assert.deepEqual(flux.page.messages, {log: [], warn: [], error: []});
        // 1920x1080: latent 240x135, padded to 120x68 patches (height x width, as the parameters write grids);
        // 3x keeps ceil(68 / 3) = 23 by 40.
        assert.equal((await shown("qwen", {width: 1920, height: 1080, todo: {ratio: 0.89}})).first,
            "First pass 1920×1080: Qwen-Image image tokens 8160 (68x120) → 920 (23x40, 3x) + the prompt's text " +
            "tokens kept");
        // 1000 px: latent 125, padded to 63 patches.
        assert.equal((await shown("lumina", {width: 1000, height: 1000})).first,
            "First pass 1000×1000: Lumina 2 / Z-Image image tokens 3969 (63x63) → 1024 (32x32, 2x) + the prompt's " +
            "text tokens kept");
        assert.match((await shown("chroma")).first, /: Chroma image tokens 4096 \(64x64\) → 1024 \(32x32, 2x\) \+ the/);
        assert.match((await shown("sd3")).first, /: SD3 image tokens 4096 \(64x64\) → 1024 \(32x32, 2x\) \+ the/);
        // Wan attends over the video alone, each frame downsampled on its own: no text in its self-attention.
        assert.equal((await shown("wan", {width: 832, height: 480})).first,
            "First pass 832×480: Wan image tokens per frame 1560 (30x52) → 390 (15x26, 2x)");
        // Neo 2.26's Ernie-Image (patch 1 on the latent at pixels / 16, the same grid) keeps its text after the image;
        // Anima's self-attention has no text.
        assert.match((await shown("ernie")).first,
            /: Ernie-Image image tokens 4096 \(64x64\) → 1024 \(32x32, 2x\) \+ the prompt's text tokens kept$/);
        assert.equal((await shown("anima")).first,
            "First pass 1024×1024: Anima image tokens 4096 (64x64) → 1024 (32x32, 2x)");
        // A family this line does not know: its tokens, no claim about text.
        assert.equal((await shown({kind: "dit", family: "Future DiT"})).first,
            "First pass 1024×1024: Future DiT image tokens 4096 (64x64) → 1024 (32x32, 2x)");
    });

    test("DiT: the header says which blocks Max depth covers; a deeper ratio sets the blocks outside the middle half",
        async () => {
            const headers = [];
            for (const maxDepth of [0, 1, 2, 3]) {
                headers.push((await shown("flux", {todo: {max_depth: maxDepth}})).header);
            }
            assert.deepEqual(headers, [DIT_HEADER, ...["the middle three quarters of the blocks",
                "all blocks but the first and last", "every block"].map((scope) => DIT_HEADER.replace(
                "the middle half of the blocks", scope))]);
            // Deeper ratio -1: every block covered takes the ratio's factor, one part.
            assert.equal((await shown("flux", {todo: {max_depth: 3}})).first,
                "First pass 1024×1024: Flux image tokens 4096 (64x64) → 1024 (32x32, 2x) + the prompt's text tokens " +
                "kept");
            assert.equal((await shown("flux", {todo: {max_depth: 1, deeper_ratio: 0.9375}})).first,
                "First pass 1024×1024: Flux image tokens 4096 (64x64) → 1024 (32x32, 2x), outside the middle half " +
                "256 (16x16, 4x) + the prompt's text tokens kept");
            // Deeper ratio 0 leaves the outer blocks exact; Ratio 0 with a deeper ratio thins only those.
            assert.match((await shown("flux", {todo: {max_depth: 2, deeper_ratio: 0}})).first,
                /→ 1024 \(32x32, 2x\), outside the middle half 4096 \(64x64, 1x\) \+/);
            assert.match((await shown("flux", {todo: {ratio: 0, max_depth: 1, deeper_ratio: 0.75}})).first,
                /: Flux image tokens 4096 \(64x64\) → 4096 \(64x64, 1x\), outside the middle half 1024 \(32x32, 2x\)/);
            // Max depth 0: a deeper ratio has no blocks to act on.
            assert.doesNotMatch((await shown("flux", {todo: {deeper_ratio: 0.9375}})).first, /outside/);
        });

    test("DiT: Auto sizes the factor from the image tokens; no ToDo shows the tokens alone", async () => {
        // 2048 px: 128x128 = 16384 tokens, sqrt(16384 / 4096) = 2; 512 px: 1024 tokens, left alone.
        assert.match((await shown("flux", {width: 2048, height: 2048, todo: {auto: true}})).first,
            /: Flux image tokens 16384 \(128x128\) → 4096 \(64x64, 2x\) \+/);
        assert.match((await shown("flux", {width: 512, height: 512, todo: {auto: true}})).first,
            /: Flux image tokens 1024 \(32x32\) → 1024 \(32x32, 1x\) \+/);
        // 1536 px: 96x96, sqrt(9216 / 1024) = 3.
        assert.match((await shown("flux", {width: 1536, height: 1536,
            todo: {auto: true, auto_target_tokens: 1024}})).first, /9216 \(96x96\) → 1024 \(32x32, 3x\)/);
        // Auto on the first pass, the hires pass's own ratio.
        const auto = await shown("flux", {width: 512, height: 512, hires: {scale: 4},
            todo: {auto: true, hires_mode: "own", hires_ratio: 0.9375}});
        assert.match(auto.hires, /^Hires pass 2048×2048: Flux image tokens 16384 \(128x128\) → 1024 \(32x32, 4x\)/);
        const off = await shown("flux", {hires: {scale: 2}, todo: {enabled: false}});
        assert.equal(off.header, DIT_HEADER);
        assert.equal(off.first, "First pass 1024×1024: no ToDo, Flux image tokens 4096 (64x64)");
        assert.equal(off.hires, "Hires pass 2048×2048: no ToDo, Flux image tokens 16384 (128x128)");
        assert.equal((await shown("flux", {hires: {scale: 2}, todo: {hires_only: true}})).first,
            "First pass 1024×1024: no ToDo, Flux image tokens 4096 (64x64)");
    });

    test("DiT in img2img: Resize by and the no-image line as on a U-Net", async () => {
        const {first} = await shown("flux", {tab: "img2img", resize_by: {scale: 1.5, image: [911, 512]}});
        // 1366x768: latent 170x96, 85x48 patches.
        assert.equal(first,
            "First pass 1366×768: Flux image tokens 4080 (48x85) → 1032 (24x43, 2x) + the prompt's text tokens kept");
        assert.equal((await shown("flux", {tab: "img2img", resize_by: {scale: 2, image: null}})).first,
            "First pass: no image selected");
    });

    const FALLBACK = "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1) · SDXL 4096 → 1024 (2x, latent/2)";

    test("no model, or one ToDo cannot act on (unknown): both U-Net layouts, quietly", async () => {
        const {first, page} = await shown("unknown");
        assert.equal(first, FALLBACK);
        assert.deepEqual(page.messages, {log: [], warn: [], error: []});
        // A U-Net answer with levels this line has no layout for is shown as unknown.
        assert.equal((await shown({kind: "unet", levels: [2, 3]})).first, FALLBACK);
        assert.equal((await shown({kind: "dit"})).first, FALLBACK);
    });

    for (const failure of FAILURES) {
        test("the route answers " + failure + ": both U-Net layouts and one console line, however often asked",
            async () => {
                const {first, page} = await shown(failure);
                assert.equal(first, FALLBACK);
                assert.equal(page.messages.log.length, 1);
                assert.match(page.messages.log[0],
                    /^\[ToDo\] K\/V line shows the SD1\/SD2 and SDXL layouts: no layout of the loaded model from /);
                for (let round = 0; round < 4; round++) {
                    page.dispatch("click");
                    page.dispatch("input");
                    page.clock.advance(6000);
                    await page.settle();
                }
                assert.equal(page.line("txt2img").split("\n")[1], FALLBACK);
                assert.deepEqual(page.messages, {log: [page.messages.log[0]], warn: [], error: []});
                // 404: no such route on this server (an older one, another host), so never asked again; other
                // failures may pass (a restart), so asked again, at most once per 5 s.
                assert.equal(page.requests.length, failure === "404" ? 1 : 5);
            });
    }

    test("after a failure the server's answer still counts: the line follows once it comes", async () => {
        const {page} = await shown("network error");
        page.layoutAnswer = "flux";
        page.dispatch("click");
        page.clock.advance(5000);
        await page.settle();
        assert.match(page.line("txt2img"), /^Preview of the K\/V tokens/);
        assert.equal(page.messages.log.length, 1);
    });

    test("a page without fetch: no request, both U-Net layouts, nothing logged", async () => {
        const page = await settledPage({tab: "txt2img", width: 1024, height: 1024, todo: {enabled: true}});
        page.checkpointDropdown("sd_xl_base_1.0.safetensors");
        page.dispatch("click");
        page.chooseCheckpoint("flux1-dev.safetensors");
        page.uiUpdated();
        page.clock.advance(60000);
        await page.settle();
        assert.equal(page.requests.length, 0);
        assert.equal(page.line("txt2img").split("\n")[1], FALLBACK);
        assert.deepEqual(page.messages, {log: [], warn: [], error: []});
    });

    test("asked again after clicks and input, at most once per 5 s, the last event always followed", async () => {
        const {page} = await shown("sdxl");
        const times = () => page.requests.map(([at]) => at);
        // Updates of the page alone ask nothing.
        page.uiUpdated();
        page.clock.advance(20000);
        assert.deepEqual(times(), [0]);
        // A burst of events: one request at once, one when the interval is over, none after.
        for (let i = 0; i < 10; i++) {
            page.dispatch(["click", "input", "change"][i % 3]);
            page.clock.advance(100);
        }
        assert.deepEqual(times(), [0, 20000]);
        page.clock.advance(20000);
        assert.deepEqual(times(), [0, 20000, 25000]);
        // The model changed meanwhile (another tab, the API): the next click shows it.
        page.layoutAnswer = "flux";
        page.dispatch("click");
        await page.settle();
        assert.deepEqual(times(), [0, 20000, 25000, 41000]);
        assert.match(page.line("txt2img"), /Flux image tokens 4096/);
        page.layoutAnswer = "sd15";
        page.dispatch("change");
        page.clock.advance(4999);
        await page.settle();
        assert.match(page.line("txt2img"), /Flux image tokens 4096/);
        page.clock.advance(1);
        await page.settle();
        assert.equal(page.line("txt2img").split("\n")[1], "First pass 1024×1024: SD1/SD2 16384 → 4096 (2x, latent/1)");
        assert.deepEqual(page.messages, {log: [], warn: [], error: []});
    });

    test("a new checkpoint in the dropdown: asked again after 3, 10 and 30 s, as it loads", async () => {
        const page = new WebUIPage();
        page.configure({tab: "txt2img", width: 1024, height: 1024, todo: {enabled: true}, layout: "sdxl"});
        page.checkpointDropdown("sd_xl_base_1.0.safetensors");
        page.load();
        page.uiLoaded();
        page.uiUpdated();
        await page.settle();
        assert.match(page.line("txt2img"), /SDXL 4096 → 1024/);
        page.clock.advance(60000);
        assert.equal(page.requests.length, 1, "the same checkpoint asks nothing");
        // The dropdown shows the new checkpoint (gradio sets it; the WebUI's change event loads the model).
        page.chooseCheckpoint("flux1-dev.safetensors");
        page.uiUpdated();
        page.clock.advance(3000);
        await page.settle();
        assert.match(page.line("txt2img"), /SDXL/, "still loading: the server still has SDXL");
        page.layoutAnswer = "flux";
        page.clock.advance(7000);
        await page.settle();
        assert.match(page.line("txt2img"), /^Preview .*\nFirst pass 1024×1024: Flux image tokens 4096/);
        page.clock.advance(20000);
        assert.deepEqual(page.requests.map(([at]) => at), [0, 63000, 70000, 90000]);
        page.clock.advance(60000);
        assert.equal(page.requests.length, 4);
        assert.deepEqual(page.messages, {log: [], warn: [], error: []});
    });

    test("a page that breaks mid-update stops asking too", async () => {
        const {page} = await shown("flux");
        page.context.gradioApp = () => null;
        page.uiUpdated();
        assert.equal(page.messages.warn.length, 1);
        page.dispatch("click");
        page.dispatch("input");
        page.clock.advance(60000);
        await page.settle();
        assert.equal(page.requests.length, 1);
        assert.deepEqual(page.messages.log, []);
    });

    test("an answer arriving after the page broke changes nothing and throws nothing", async () => {
        const page = new WebUIPage();
        page.configure({tab: "txt2img", width: 1024, height: 1024, todo: {enabled: true}, layout: "flux"});
        page.load();
        page.uiLoaded(); // the request goes out
        page.uiUpdated();
        const before = page.line("txt2img");
        page.context.gradioApp = () => null;
        page.uiUpdated();
        await page.settle();
        assert.equal(page.line("txt2img"), before);
        assert.equal(page.messages.warn.length, 1);
    });
});
