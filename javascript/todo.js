// ToDo extension: hover hints on every control, the ratio's per-side factor, and a live line of the K/V
// tokens attention uses with and without ToDo, per pass, for the current size and hires fix: on a U-Net at depth 0
// (and depth 1 when Max depth >= 1), on a diffusion transformer (DiT) the image tokens. Which model is loaded comes
// from the server (GET todo/v1/layout, scripts/todo_script.py); without an answer the line shows both U-Net layouts.
// The arithmetic mirrors todo_ext (config.ratio_to_factor, ToDoConfig.factor_at, patch.plan_kv_tokens,
// dit._patches, joint.reduced_grid).

(function() {
    const MAX_FACTOR = 8;
    const INTEGER_SNAP = 0.02;
    const LAYOUTS = [["SD1/SD2", 0], ["SDXL", 1]]; // model family, log2 downscale of its depth-0 attention level
    const UNET_HEADER = "K/V tokens of self-attention at depth 0 (d1 = depth 1), without \u2192 with ToDo:";
    // A DiT's image tokens are latent patches of 2x2, the sides padded up (dit._patches); Max depth counts blocks
    // from the middle of the stack outwards (dit.depth_of_position).
    const DIT_PATCH = 2;
    const DIT_SCOPES = ["the middle half of the blocks", "the middle three quarters of the blocks",
        "all blocks but the first and last", "every block"];
    // Joint attention with the text (Ernie-Image's after the image); Anima's self-attention is over the image alone.
    const TEXT_KEPT = ["Flux", "Chroma", "Lumina 2 / Z-Image", "Qwen-Image", "Krea 2", "Ernie-Image", "SD3"];
    const PER_FRAME = ["Wan"]; // self-attention over the video alone, each frame downsampled on its own
    // Relative to the page, as the WebUI's own progressbar.js asks ./internal/progress (a --subpath or a proxy).
    const LAYOUT_ROUTE = "./todo/v1/layout";
    const LAYOUT_INTERVAL = 5000; // ms: at most one request this often
    const CHECKPOINT_LOOKS = [3000, 10000, 30000]; // ms after the checkpoint dropdown changes: loading takes a while

    function snap(factor) {
        const whole = Math.round(factor);
        return Math.abs(factor - whole) <= INTEGER_SNAP * factor ? whole : factor;
    }

    function ratioToFactor(ratio) {
        return snap(1 / Math.sqrt(1 - ratio));
    }

    function passFactor(settings, depth0Tokens, depth) {
        if (depth > 0 && settings.deeper >= 0) {
            return ratioToFactor(settings.deeper);
        }
        if (settings.auto) {
            return Math.min(MAX_FACTOR, Math.max(1, snap(Math.sqrt(depth0Tokens / settings.target))));
        }
        return ratioToFactor(settings.ratio);
    }

    function element(id) {
        return gradioApp().getElementById(id);
    }

    function numberOf(id, fallback) {
        const input = gradioApp().querySelector("#" + id + " input[type=number]");
        const value = input ? parseFloat(input.value) : NaN;
        return isNaN(value) ? fallback : value;
    }

    function checkedOf(id) {
        const input = gradioApp().querySelector("#" + id + " input[type=checkbox]");
        return !!(input && input.checked);
    }

    function radioOf(id, fallback) {
        const input = gradioApp().querySelector("#" + id + " input:checked");
        return input ? input.value : fallback;
    }

    function hiresTarget(tab, width, height) {
        if (tab !== "txt2img" || !checkedOf("txt2img_hr-checkbox")) {
            return null;
        }
        const resizeX = numberOf("txt2img_hr_resize_x", 0);
        const resizeY = numberOf("txt2img_hr_resize_y", 0);
        if (resizeX === 0 && resizeY === 0) {
            const scale = numberOf("txt2img_hr_scale", 2);
            return [Math.floor(width * scale), Math.floor(height * scale)];
        }
        if (resizeY === 0) {
            return [resizeX, Math.floor(resizeX * height / width)];
        }
        if (resizeX === 0) {
            return [Math.floor(resizeY * width / height), resizeY];
        }
        return [resizeX, resizeY];
    }

    function gridAt(width, height, level) {
        // The WebUI makes the latent at pixels // 8 (processing.py's opt_f; the VAE encoder floors as well), and each
        // ldm downsample halves a side rounding up.
        const scale = Math.pow(2, level);
        return [Math.ceil(Math.floor(height / 8) / scale), Math.ceil(Math.floor(width / 8) / scale)];
    }

    function describeDepth(grid, level, factor) {
        const tokens = grid[0] * grid[1];
        if (factor === null) {
            return String(tokens);
        }
        const kv = Math.ceil(grid[0] / factor) * Math.ceil(grid[1] / factor);
        const factorText = Number.isInteger(factor) ? factor : factor.toFixed(2);
        return tokens + " \u2192 " + kv + " (" + factorText + "x, latent/" + Math.pow(2, level) + ")";
    }

    function describePass(name, width, height, settings, layouts) {
        const parts = layouts.map(function([family, level]) {
            const grid = gridAt(width, height, level);
            const tokens = grid[0] * grid[1];
            let text = family + " " + describeDepth(grid, level, settings ? passFactor(settings, tokens, 0) : null);
            if (settings && settings.maxDepth >= 1) {
                text += ", d1 " + describeDepth(gridAt(width, height, level + 1), level + 1,
                    passFactor(settings, tokens, 1));
            }
            return text;
        });
        return name + " " + width + "\u00d7" + height + ": " + (settings ? "" : "no ToDo, ") + parts.join(" \u00b7 ");
    }

    function ditGrid(width, height) {
        // The latent at pixels // 8 as on a U-Net, then tokens per side = ceil(latent / 2) (the DiTs pad to whole
        // patches; SD3 floors, but the WebUI makes SD3 sizes multiples of 16 px, where the two agree).
        return [Math.ceil(Math.floor(height / 8) / DIT_PATCH), Math.ceil(Math.floor(width / 8) / DIT_PATCH)];
    }

    function gridText(grid) {
        return grid[0] * grid[1] + " (" + grid[0] + "x" + grid[1] + ")"; // height x width, as the parameters write it
    }

    function reducedText(grid, factor) {
        const kept = [Math.ceil(grid[0] / factor), Math.ceil(grid[1] / factor)];
        const factorText = Number.isInteger(factor) ? factor : factor.toFixed(2);
        return kept[0] * kept[1] + " (" + kept[0] + "x" + kept[1] + ", " + factorText + "x)";
    }

    function describeDitPass(name, width, height, settings, family) {
        const grid = ditGrid(width, height);
        const tokens = grid[0] * grid[1];
        let text = family + " image tokens " + (PER_FRAME.includes(family) ? "per frame " : "") + gridText(grid);
        if (settings) {
            text += " \u2192 " + reducedText(grid, passFactor(settings, tokens, 0));
            if (settings.maxDepth >= 1 && settings.deeper >= 0) {
                text += ", outside the middle half " + reducedText(grid, passFactor(settings, tokens, 1));
            }
            if (TEXT_KEPT.includes(family)) {
                text += " + the prompt's text tokens kept";
            }
        }
        return name + " " + width + "\u00d7" + height + ": " + (settings ? "" : "no ToDo, ") + text;
    }

    function ditHeader(maxDepth) {
        const scope = DIT_SCOPES[Math.min(DIT_SCOPES.length - 1, Math.max(0, Math.round(maxDepth)))];
        return "Preview of the K/V tokens of attention, without \u2192 with ToDo (in " + scope + "):";
    }

    function readSettings(prefix) {
        const base = {
            ratio: numberOf(prefix + "ratio", 0.75),
            auto: checkedOf(prefix + "auto"),
            target: numberOf(prefix + "auto_target_tokens", 4096),
            maxDepth: numberOf(prefix + "max_depth", 0),
            deeper: numberOf(prefix + "deeper_ratio", -1), // negative = same as the ratio (args.SAME_AS_RATIO)
        };
        const hiresMode = radioOf(prefix + "hires_mode", "same");
        let hires = base;
        if (hiresMode === "own") {
            hires = Object.assign({}, base, {ratio: numberOf(prefix + "hires_ratio", 0.75), auto: false});
        } else if (hiresMode === "auto") {
            hires = Object.assign({}, base, {auto: true});
        } else if (hiresMode === "off") {
            hires = null;
        }
        const usable = function(settings) {
            const deeperOn = settings && settings.maxDepth >= 1 && settings.deeper > 0;
            return settings && (settings.auto || settings.ratio > 0 || deeperOn) ? settings : null;
        };
        return {
            enabled: checkedOf(prefix + "enabled-checkbox"),
            maxDepth: base.maxDepth,
            first: checkedOf(prefix + "hires_only") ? null : usable(base),
            hires: usable(hires),
        };
    }

    function threeDigits(value) {
        // Python's format(value, ".3g"), which args.factor_label uses for the label the server renders first.
        // toPrecision rounds as Python does except a value exactly halfway between two roundings: it rounds that up,
        // Python to the even digit (99.25% kept at Ratio 0.0075: 99.3 by toPrecision, 99.2 in Python).
        const [mantissa, exponent] = value.toExponential(99).split("e"); // every digit of the label's doubles
        const halfwayAfterEvenDigit = /^\d\.\d[02468]50*$/.test(mantissa);
        return halfwayAfterEvenDigit ? Number(mantissa.slice(0, 4) + "e" + exponent) : Number(value.toPrecision(3));
    }

    function factorText(ratio) {
        if (ratio <= 0) {
            return "0 = off";
        }
        return ratio + " = " + threeDigits(ratioToFactor(ratio)) + "x per side (" +
            threeDigits((1 - ratio) * 100) + "% of K/V kept)";
    }

    function setText(node, text) {
        if (node && node.textContent !== text) {
            node.textContent = text;
        }
    }

    function applyHints(line) {
        if (line.dataset.todoHintsApplied) {
            return;
        }
        const hints = JSON.parse(line.dataset.todoHints || "{}");
        Object.keys(hints).forEach(function(id) {
            [element(id), element(id + "-checkbox")].forEach(function(node) {
                if (node) {
                    node.title = hints[id];
                }
            });
        });
        line.dataset.todoHintsApplied = "1";
    }

    function resizeByTabSelected() {
        // A1111, Forge, reForge and Neo name the resize tab group, and ui.js's get_tab_index reads its selected
        // button; Forge Classic's group has no id, so there the "Resize by" panel itself tells: gradio shows the
        // selected tab's panel as display: block and hides the others.
        if (element("img2img_tabs_resize")) {
            return typeof get_tab_index === "function" && get_tab_index("img2img_tabs_resize") === 1;
        }
        const panel = element("img2img_tab_resize_by");
        return !!panel && panel.style.display === "block";
    }

    function img2imgScaledSize() {
        // The "Resize by" tab: the WebUI generates the source image's size times Scale (modules/img2img.py), not
        // the width/height sliders; currentImg2imgSourceResolution is javascript/ui.js's.
        if (!resizeByTabSelected()) {
            return null;
        }
        const scale = numberOf("img2img_scale", 1);
        const source = typeof currentImg2imgSourceResolution === "function" ?
            currentImg2imgSourceResolution(0, 0, scale) : [0, 0, scale];
        return [Math.floor(source[0] * scale), Math.floor(source[1] * scale)];
    }

    function update(tab) {
        const prefix = "script_" + tab + "_todo_";
        const line = gradioApp().querySelector("#" + prefix + "kv_line .todo-kv-line");
        if (!line) {
            return;
        }
        applyHints(line);
        const factorBox = element(prefix + "factor");
        setText(factorBox && (factorBox.querySelector(".prose") || factorBox), factorText(numberOf(prefix + "ratio", 0.75)));

        let width = numberOf(tab + "_width", 512);
        let height = numberOf(tab + "_height", 512);
        const scaled = tab === "img2img" ? img2imgScaledSize() : null;
        if (scaled) {
            [width, height] = scaled;
        }
        const settings = readSettings(prefix);
        const dit = layout && layout.kind === "dit";
        const describe = function(name, passWidth, passHeight, passSettings) {
            return dit ? describeDitPass(name, passWidth, passHeight, passSettings, layout.family) :
                describePass(name, passWidth, passHeight, passSettings, layout ? layout.layouts : LAYOUTS);
        };
        const lines = [dit ? ditHeader(settings.maxDepth) : UNET_HEADER];
        if (scaled && (width === 0 || height === 0)) {
            lines.push("First pass: no image selected");
        } else {
            lines.push(describe("First pass", width, height, settings.enabled ? settings.first : null));
        }
        const hires = hiresTarget(tab, width, height);
        if (hires) {
            lines.push(describe("Hires pass", hires[0], hires[1], settings.enabled ? settings.hires : null));
        }
        setText(line, lines.join("\n"));
        line.style.whiteSpace = "pre-line";
    }

    let off = false;
    let layout = null; // the loaded model's, from the server: {kind: "unet", layouts} or {kind: "dit", family}
    const canFetch = typeof fetch === "function";
    let cooling = false; // a request went out less than LAYOUT_INTERVAL ago
    let wanted = false; // and another was asked for since: it goes out when the interval ends
    let routeMissing = false; // 404: another host, or a server older than the route
    let noted = false;
    let checkpoint; // the checkpoint dropdown's value when last seen

    function layoutFrom(answer) {
        // The server's answer (hosts.layout_of), or null where it names nothing this line knows how to show.
        if (answer && answer.kind === "unet" && Array.isArray(answer.levels)) {
            const known = LAYOUTS.filter(function([, level]) {
                return level === answer.levels[0];
            });
            return known.length ? {kind: "unet", layouts: known} : null;
        }
        if (answer && answer.kind === "dit" && typeof answer.family === "string" && answer.family) {
            return {kind: "dit", family: answer.family};
        }
        return null;
    }

    function useLayout(next) {
        if (JSON.stringify(next) !== JSON.stringify(layout)) {
            layout = next;
            updateBoth();
        }
    }

    function askLayout() {
        // At most one request per LAYOUT_INTERVAL; one asked for in between goes out when the interval ends.
        if (!canFetch || off || routeMissing) {
            return;
        }
        if (cooling) {
            wanted = true;
            return;
        }
        cooling = true;
        wanted = false;
        setTimeout(function() {
            cooling = false;
            if (wanted) {
                askLayout();
            }
        }, LAYOUT_INTERVAL);
        new Promise(function(resolve) {
            resolve(fetch(LAYOUT_ROUTE, {cache: "no-store"}));
        }).then(function(response) {
            if (response.status === 404) {
                routeMissing = true;
            }
            if (!response.ok) {
                throw new Error("HTTP " + response.status);
            }
            return response.json();
        }).then(function(answer) {
            useLayout(layoutFrom(answer));
        }).catch(function(error) {
            // Another host, an old server, a restart: today's line, and one console line for the lot.
            if (!noted) {
                noted = true;
                console.log("[ToDo] K/V line shows the SD1/SD2 and SDXL layouts: no layout of the loaded model from " +
                    LAYOUT_ROUTE + " (" + error + ")");
            }
            useLayout(null);
        });
    }

    function watchCheckpoint() {
        // A new checkpoint loads for a while after the dropdown shows it: look again a few times.
        const input = canFetch ? gradioApp().querySelector("#setting_sd_model_checkpoint input") : null;
        if (!input) {
            return;
        }
        if (checkpoint !== undefined && input.value !== checkpoint) {
            CHECKPOINT_LOOKS.forEach(function(delay) {
                setTimeout(askLayout, delay);
            });
        }
        checkpoint = input.value;
    }

    function updateBoth() {
        if (off) {
            return;
        }
        try {
            update("txt2img");
            update("img2img");
            watchCheckpoint();
        } catch (error) {
            // A page this was not written for (another gradio, a missing element or helper of javascript/ui.js):
            // the line and the hints stay as they are; generation and the rest of the page are not concerned.
            off = true;
            console.warn("[ToDo] K/V line and hints off on this page (" + error + ")");
        }
    }

    if (typeof gradioApp !== "function" || typeof onAfterUiUpdate !== "function" ||
        typeof onUiLoaded !== "function") {
        console.warn("[ToDo] K/V line and hints off: this WebUI's script.js has no gradioApp/onAfterUiUpdate/onUiLoaded");
        return;
    }

    // After DOM updates settle (the WebUI's recommendation over onUiUpdate, which runs on every mutation).
    onAfterUiUpdate(updateBoth);

    onUiLoaded(function() {
        const changed = function() {
            updateBoth();
            askLayout();
        };
        gradioApp().addEventListener("input", changed);
        gradioApp().addEventListener("change", changed);
        // Paste, "Send to", tab switches and image uploads set values without input events; the server's answer
        // arrives a little later, so look again once it has.
        gradioApp().addEventListener("click", function() {
            setTimeout(updateBoth, 300);
            setTimeout(updateBoth, 1500);
            askLayout();
        });
        askLayout();
    });
})();
